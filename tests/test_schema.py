"""
The JSON Schema agw ships and the loader agree: a config that uses every
field the schema has is accepted by both, an unknown or not-yet-supported
field anywhere is refused by both, and the seed config and the docs'
examples validate.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema
import yaml
from twisted.trial.unittest import SynchronousTestCase

from agw.config import ConfigError, parse_config
from agw.config._unsupported import UNSUPPORTED
from tests.support import REPO, SEED_CONFIG

SCHEMA_FILE = os.path.join(REPO, "agw", "config", "agw.schema.json")
ENV = {"OPENAI_API_KEY": "sk-backend", "AZURE_OPENAI_API_KEY": "azure-key", "VOICE_APP_KEY": "sk-voice", "UPSTREAM": "api.example.com:443", "COLLECTOR_TOKEN": "t", "OPENAI_WEBHOOK_SECRET": "whsec_c2VjcmV0LWtleQ=="}
HASH = "sha256:" + "ab" * 32

# Every field agw accepts, each kind at least once (with each alternative of "exactly one of").
EVERYTHING = yaml.safe_load(f"""
config:
  statsAddr: "[::]:15020"
  readinessAddr: 127.0.0.1:15021
  adminAddr: localhost:15000
  workers: 2
  modelCatalog: [{{file: prices.json}}]
  database: {{url: "sqlite:///tmp/budgets.db"}}
  metrics: {{fields: {{add: {{team: apiKey.team}}}}}}
  logging: {{fields: {{add: {{team.name: apiKey.team}}}}}}
  tracing:
    otlpEndpoint: http://localhost:4318
    otlpProtocol: http
    path: /v1/traces
    headers: {{authorization: Bearer x}}
    randomSampling: "0.5"
    clientSampling: true
binds:
- port: 3000
  listeners:
  - name: main
    hostname: example.com
    protocol: HTTP
    routes:
    - name: realtime
      matches: [{{path: {{exact: /v1/realtime}}}}, {{path: {{pathPrefix: /v1/}}}}, {{path: {{regex: "^/v2/.*"}}}}]
      backends:
      - ai:
          name: openai
          provider: {{openAI: {{model: gpt-4}}}}
          hostOverride: "$UPSTREAM"
          pathOverride: /v1/chat/completions
          pathPrefix: /openai
      policies:
        ai:
          routes: {{/v1/realtime: realtime, "*": passthrough}}
          defaults: {{temperature: 0.2, metadata: {{team: a}}}}
          overrides: {{max_tokens: 256}}
          modelAliases: {{fast: gpt-4o-mini, "claude-*": gpt-4o}}
          prompts:
            prepend: [{{role: system, content: Be brief.}}]
            append: [{{role: user, content: Answer in English.}}]
          promptGuard:
            streaming: Enabled
            holdChars: 32
            holdForTranscript: 3s
            request:
            - regex: {{action: mask, rules: [{{builtin: email}}, {{pattern: "secret-[0-9]+"}}]}}
              scope: [systemPrompt, messages, toolInput, toolOutput]
            - regex: {{action: reject, rules: [{{builtin: creditCard}}]}}
              rejection: {{status: 451, body: no cards, headers: {{add: {{x-guard: cards}}, set: {{x-a: b}}, remove: [x-c]}}}}
            - webhook:
                target: {{host: "127.0.0.1:9000"}}
                forwardHeaderMatches: [{{name: x-team, value: {{exact: a}}}}, {{name: x-user, value: {{regex: "u-.*"}}}}]
                failureMode: failOpen
                timeout: 500ms
            - openAIModeration:
                model: omni-moderation-latest
                url: "http://127.0.0.1:9001/v1/moderations"
                timeout: 2s
                failureMode: failClosed
                policies: {{backendAuth: {{key: "$OPENAI_API_KEY"}}, backendTLS: {{root: ca.pem}}}}
            response:
            - regex: {{action: mask, rules: [{{builtin: ssn}}]}}
            - webhook: {{target: {{host: "127.0.0.1:9000"}}}}
              rejection: {{status: 403}}
        backendAuth: {{key: "$OPENAI_API_KEY"}}
        transformations: {{request: {{remove: [x-a], add: {{x-b: one}}, set: {{x-c: 2}}}}}}
        backendTLS: {{root: ca.pem, hostname: api.example.com}}
        apiKey:
          mode: Strict
          keys:
          - key: sk-one
            metadata: {{name: team-one, team: a}}
            allowedModels: ["gpt-*"]
            allowPassthrough: true
            budgets:
            - name: daily
              limit: {{unit: USD, amount: 5.5}}
              window: {{rolling: 24h}}
              onBudgetExceeded: Audit
          - keyHash: "{HASH}"
          location: {{queryParameter: {{name: api-key}}}}
        localRateLimit: [{{maxTokens: 10, tokensPerFill: 1, fillInterval: 1s, type: tokens}}]
        realtimeCalls:
          maxSecretLifetime: 5m
          sideband: {{reconnectAttempts: 5, reconnectDelay: 100ms, maxReconnectDelay: 2s, failureMode: failOpen}}
          sip:
            webhookSecret: "$OPENAI_WEBHOOK_SECRET"
            timestampTolerance: 2m
            lines:
            - {{to: "+18005550100", consumer: team-one, session: {{model: gpt-realtime, instructions: Be brief.}}}}
            - {{header: {{name: X-Line, value: sales}}, session: {{type: realtime, model: gpt-realtime}}}}
    - name: azure
      backends:
      - ai:
          name: azure
          provider: {{azure: {{resourceName: r, resourceType: foundry, apiVersion: v1, projectName: p, model: gpt-4o}}}}
      policies:
        backendAuth: {{key: {{value: "$OPENAI_API_KEY", location: {{header: {{name: api-key, prefix: ""}}}}}}}}
        apiKey: {{keys: [{{key: sk-azure}}], location: {{header: {{name: x-api-key, prefix: ""}}}}}}
    - name: azure-openai
      backends: [{{ai: {{name: aoai, provider: {{azureOpenAI: {{host: r.openai.azure.com, apiVersion: "2024-10-21", model: d}}}}}}}}]
- port: "3001"
- port: 3443
  listeners:
  - name: secure
    hostname: api.example.com
    protocol: HTTPS
    tls:
      cert: cert.pem
      key: key.pem
      mode: static
      minTLSVersion: TLS_V1_2
      maxTlsVersion: TLS_V1_3
      cipherSuites: [TLS_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, ECDHE-RSA-AES128-GCM-SHA256]
- port: 3444
  listeners:
  - protocol: HTTPS
    tls: {{cert: cert.pem, key: key.pem, minTlsVersion: TLS_V1_3, maxTLSVersion: TLS_V1_3}}
""")


def schema() -> dict[str, Any]:
    with open(SCHEMA_FILE) as f:
        return json.load(f)


def mappings(schema: dict[str, Any], document: Any) -> list[tuple[str, tuple, Any]]:
    """Every mapping of C{document} with the kind the schema gives it: (kind, path, mapping)."""
    return [("top", (), document), *objects(schema, document, schema["$defs"])]


def objects(node: Any, instance: Any, definitions: dict[str, Any], path: tuple = ()) -> Iterator[tuple[str, tuple, Any]]:
    if "$ref" in node:
        kind = node["$ref"].rsplit("/", 1)[1]
        yield kind, path, instance
        node = definitions[kind]
    for alternative in node.get("anyOf", ()):
        if "$ref" in alternative and isinstance(instance, dict):  # a string or a mapping: the mapping's kind
            yield from objects(alternative, instance, definitions, path)
    if isinstance(instance, dict) and "properties" in node:
        for key, value in instance.items():
            yield from objects(node["properties"][key], value, definitions, path + (key,))
    elif isinstance(instance, list) and "items" in node:
        for i, item in enumerate(instance):
            yield from objects(node["items"], item, definitions, path + (i,))


def at(document: Any, path: tuple) -> Any:
    for part in path:
        document = document[part]
    return document


def loads(document: Any) -> ConfigError | None:
    """The loader's error for C{document}, or C{None} if it is accepted."""
    try:
        parse_config(yaml.safe_dump(document), ENV)
    except ConfigError as e:
        return e
    return None


class SchemaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.schema = schema()
        self.validator = jsonschema.Draft202012Validator(self.schema)

    def test_shipped_file_is_generated_from_the_model_and_is_a_schema(self) -> None:
        printed = subprocess.run([sys.executable, "-m", "agw.config"], capture_output=True, check=True, cwd=REPO).stdout
        self.assertEqual(json.loads(printed), self.schema, "regenerate: python -m agw.config > agw/config/agw.schema.json")
        jsonschema.Draft202012Validator.check_schema(self.schema)

    def test_every_schema_field_is_used_here_and_accepted_by_both(self) -> None:
        self.assertEqual(list(self.validator.iter_errors(EVERYTHING)), [])
        self.assertIsNone(loads(EVERYTHING))
        used = {(kind, key) for kind, _, mapping in mappings(self.schema, EVERYTHING) for key in mapping}
        fields = {(kind, key) for kind, d in self.schema["$defs"].items() for key in d["properties"]}
        fields |= {("top", key) for key in self.schema["properties"]}
        self.assertEqual(fields - used, set(), "fields in the schema that EVERYTHING does not try")

    def test_unknown_and_unsupported_fields_are_refused_by_both_everywhere(self) -> None:
        places = [(kind, path) for kind, path, _ in mappings(self.schema, EVERYTHING) if kind != "apiKeyEntry" or path]
        self.assertGreater(len(places), 30)
        for kind, path in places:
            if kind == "apiKeyEntry" and "metadata" in path:
                continue
            for key in ("bogusField", *sorted(UNSUPPORTED.get(kind, ()))):
                document = copy.deepcopy(EVERYTHING)
                at(document, path)[key] = {}
                where = (kind, path, key)
                self.assertFalse(self.validator.is_valid(document), f"the schema accepts {where}")
                error = loads(document)
                self.assertIsNotNone(error, f"the loader accepts {where}")
                self.assertIn("unknown field" if key == "bogusField" else "not by agw yet", str(error), where)

    def test_required_fields_agree(self) -> None:
        for kind, path, mapping in mappings(self.schema, EVERYTHING):
            definition = self.schema if kind == "top" else self.schema["$defs"][kind]
            for key in definition.get("required", ()):
                document = copy.deepcopy(EVERYTHING)
                del at(document, path)[key]
                self.assertFalse(self.validator.is_valid(document), (kind, path, key))
                self.assertIsNotNone(loads(document), f"the loader accepts {path} without {key}")

    def test_seed_config_and_docs_examples_validate(self) -> None:
        with open(SEED_CONFIG) as f:
            documents = [yaml.safe_load(f)]
        for name in sorted(os.listdir(os.path.join(REPO, "docs"))):
            if name.endswith(".md"):
                with open(os.path.join(REPO, "docs", name)) as f:
                    documents += [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", f.read(), re.S)]
        self.assertGreaterEqual(len(documents), 3)
        for document in documents:
            if "binds" not in document:  # a fragment: in a config of its own
                document = {"config": {**EVERYTHING["config"], **document.get("config", {})}, "binds": EVERYTHING["binds"]}
            self.assertEqual([e.message for e in self.validator.iter_errors(document)], [])
            self.assertIsNone(loads(document))

    def test_values_the_loader_refuses_the_schema_refuses(self) -> None:
        for edit in (
            lambda d: d["binds"][0].update(port=70000),
            lambda d: d["config"].update(workers=-1),
            lambda d: d["config"].update(statsAddr="15020"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "matches", 0, "path")).update(pathPrefix="/x"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "apiKey", "keys", 1)).update(key="k"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "ai", "routes")).update(x="messages"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "localRateLimit", 0)).update(fillInterval="soon"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "apiKey", "keys", 1)).update(keyHash="md5:0123"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "apiKey", "keys", 0)).update(allowPassthrough="yes"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "realtimeCalls", "sideband")).update(failureMode="close"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "realtimeCalls", "sideband")).update(reconnectAttempts=-1),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "realtimeCalls", "sip", "lines", 0, "session")).pop("model"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "realtimeCalls", "sip")).update(lines=[]),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "ai", "promptGuard", "request", 0, "regex")).update(action="block"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "ai", "promptGuard", "request", 0, "regex", "rules", 0)).update(builtin="iban"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "ai", "promptGuard", "request", 0, "regex", "rules", 0)).update(pattern="x"),
            lambda d: at(d, ("binds", 0, "listeners", 0, "routes", 0, "policies", "ai", "promptGuard", "request", 1, "rejection")).update(status=99),
        ):
            document = copy.deepcopy(EVERYTHING)
            edit(document)
            self.assertFalse(self.validator.is_valid(document), document)
            self.assertIsNotNone(loads(document))
