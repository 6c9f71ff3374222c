"""
The shape of agentgateway's YAML as agw accepts it: for each kind of
mapping, its fields and what each holds. The parser takes the fields it
accepts from here (L{fields_of}), and L{json_schema} turns the same table
into the JSON Schema agw ships, so the two cannot disagree about a field.
Value rules the schema cannot say (a regex compiles, a port is bound once)
stay in the parser.
"""

from __future__ import annotations

from typing import Any

from agw.config._guardrails import Builtin, Scope
from agw.config._model import UNSERVED_ROUTE_TYPES, RouteType
from agw.config._tls import SUITE_ALIASES, TLS12_SUITES, TLS13_SUITES, TLSVersion

SCHEMA_ID = "https://agw.dev/schema/config.json"

Fragment = dict[str, Any]


def ref(kind: str) -> Fragment:
    return {"$ref": f"#/$defs/{kind}"}


def array(items: Fragment, min_items: int = 0) -> Fragment:
    return {"type": "array", "items": items, **({"minItems": min_items} if min_items else {})}


def one_of(*values: str) -> Fragment:
    return {"type": "string", "enum": list(values)}


def text(description: str | None = None) -> Fragment:
    return {"type": "string", **({"description": description} if description else {})}


def caseless(*words: str) -> Fragment:
    """A string that is one of C{words} in any case (ECMA regexes have no inline flags)."""
    alternatives = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in word) for word in words)
    return {"type": "string", "pattern": f"^({alternatives})$"}


def map_of(values: Fragment, description: str) -> Fragment:
    return {"type": "object", "additionalProperties": values, "description": description}


ADDRESS = {"type": "string", "pattern": r"^(\[[^\]]+\]|[^:\[\]]*):\d{1,5}$", "description": "host:port, e.g. [::]:15020"}
DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d))+$", "description": "a duration such as 1s, 1h30m or 24h"}
POSITIVE = {"type": "integer", "minimum": 1}
SHARE = {"anyOf": [
    {"type": "boolean"}, {"type": "number", "minimum": 0, "maximum": 1},
    {"type": "string", "pattern": r"^\s*(true|false|0(\.\d*)?|1(\.0*)?|\.\d+)\s*$"},
], "description": "true, false, or the share of requests traced (0.0-1.0)"}
FIELDS_ADD = map_of(text("apiKey.<metadata field>"), "extra field name to apiKey.<metadata field>")

# What a kind needs beyond its fields.
EXTRA: dict[str, Fragment] = {
    "path": {"minProperties": 1, "maxProperties": 1},
    "apiKeyLocation": {"minProperties": 1, "maxProperties": 1},
    "listener": {"if": {"properties": {"protocol": {"const": "HTTPS"}}, "required": ["protocol"]}, "then": {"required": ["tls"]}},
    "serverTLS": {"allOf": [
        {"not": {"required": ["minTLSVersion", "minTlsVersion"]}}, {"not": {"required": ["maxTLSVersion", "maxTlsVersion"]}},
    ]},
    "provider": {"minProperties": 1, "maxProperties": 1},
    "apiKeyEntry": {"oneOf": [{"required": ["key"]}, {"required": ["keyHash"]}]},
    "regexRule": {"oneOf": [{"required": ["builtin"]}, {"required": ["pattern"]}]},
}

#: Each kind of mapping: its fields (a JSON Schema fragment each), which are required, and what it is.
SHAPES: dict[str, tuple[dict[str, Fragment], tuple[str, ...], str]] = {
    "top": ({"binds": array(ref("bind"), 1), "config": ref("config")}, ("binds",), "An agentgateway config file as agw serves it."),
    "config": ({
        "statsAddr": ADDRESS, "readinessAddr": ADDRESS, "adminAddr": ADDRESS,
        "workers": {"type": "integer", "minimum": 0, "description": "gateway processes (0: one per CPU)"},
        "modelCatalog": array(ref("modelCatalogEntry")), "database": ref("database"),
        "metrics": ref("metrics"), "logging": ref("logging"), "tracing": ref("tracing"),
    }, (), "Process-wide settings."),
    "tracing": ({
        "otlpEndpoint": {"type": "string", "pattern": "^https?://", "description": "the OTLP/HTTP collector, e.g. http://localhost:4318"},
        "otlpProtocol": one_of("http"), "path": {"type": "string", "pattern": "^/", "description": "default /v1/traces"},
        "headers": map_of(text(), "headers sent with each export (credentials, say)"),
        "randomSampling": SHARE, "clientSampling": SHARE,
    }, ("otlpEndpoint",), "Spans over OTLP/HTTP."),
    "database": ({"url": {"type": "string", "pattern": "^(sqlite|postgresql|postgres)://", "description": "where budgets are kept"}}, ("url",), "Shared budget store."),
    "metrics": ({"fields": ref("fields")}, (), "Extra metric labels."),
    "logging": ({"fields": ref("fields")}, (), "Extra access-log fields."),
    "fields": ({"add": FIELDS_ADD}, (), "Fields to add."),
    "modelCatalogEntry": ({"file": text("a model price catalog (agentgateway's format)")}, ("file",), "A price catalog file."),
    "bind": ({
        "port": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535}, {"type": "string", "pattern": r"^\d+$"}]},
        "listeners": array(ref("listener")),
    }, ("port",), "A port agw listens on."),
    "listener": ({
        "name": text(), "hostname": text(), "protocol": one_of("HTTP", "HTTPS"), "tls": ref("serverTLS"),
        "routes": array(ref("route")),
    }, (), "Routes served on a bind (HTTPS: with tls; a bind's listeners are all HTTP or all HTTPS)."),
    "serverTLS": ({
        "cert": text("the certificate chain, a PEM file (leaf first)"), "key": text("its private key, an unencrypted PEM file"),
        "mode": one_of("static"),
        **{name: one_of(*(v.value for v in TLSVersion)) for name in ("minTLSVersion", "minTlsVersion", "maxTLSVersion", "maxTlsVersion")},
        "cipherSuites": array(one_of(*TLS13_SUITES, *TLS12_SUITES, *SUITE_ALIASES), 1),
    }, ("cert", "key"), "The listener's certificate (HTTPS): TLS 1.2 and 1.3, modern cipher suites."),
    "route": ({
        "name": text(), "matches": array(ref("match")), "backends": {**array(ref("backend")), "maxItems": 1},
        "policies": ref("policies"),
    }, (), "Where matching requests go."),
    "match": ({"path": ref("path")}, (), "What a request must match."),
    "path": ({"exact": text(), "pathPrefix": text(), "regex": text()}, (), "Exactly one of exact, pathPrefix, regex."),
    "backend": ({"ai": ref("ai")}, ("ai",), "An AI backend."),
    "ai": ({
        "name": text(), "provider": ref("provider"), "hostOverride": ADDRESS, "pathOverride": text(), "pathPrefix": text(),
    }, ("name", "provider"), "An AI provider."),
    "provider": ({
        "openAI": ref("openAI"), "azure": ref("azure"), "azureOpenAI": ref("azureOpenAI"),
    }, (), "The provider: exactly one of openAI, azure, azureOpenAI."),
    "openAI": ({"model": text("the model to use when the request names none")}, (), "OpenAI."),
    "azure": ({
        "resourceName": text("the Azure resource: {resourceName}.openai.azure.com (openAI) or .services.ai.azure.com (foundry)"),
        "resourceType": one_of("openAI", "foundry", "aiServices"),
        "apiVersion": text("v1 (default), preview, or a dated version such as 2024-10-21"),
        "projectName": text("the Foundry project (default: resourceName)"),
        "model": text("the deployment to use whatever the request names"),
    }, ("resourceName", "resourceType"), "Azure OpenAI (agentgateway's azure provider)."),
    "azureOpenAI": ({
        "host": text("the resource's host, e.g. my-resource.openai.azure.com"),
        "apiVersion": text("v1 (default), preview, or a dated version"),
        "model": text("the deployment to use whatever the request names"),
    }, ("host",), "Azure OpenAI, agentgateway's older form of azure."),
    "policies": ({
        "ai": ref("aiPolicy"), "backendAuth": ref("backendAuth"), "transformations": ref("transformations"),
        "backendTLS": ref("backendTLS"), "apiKey": ref("apiKey"), "localRateLimit": array(ref("localRateLimit")),
        "realtimeCalls": ref("realtimeCalls"),
    }, (), "What agw does to a route's requests."),
    "realtimeCalls": ({
        "maxSecretLifetime": {**DURATION, "description": (
            "the longest expires_after a client secret gets (10s to 2h, whole seconds; default 10m)"
        )},
        "sideband": ref("sideband"), "sip": ref("sip"),
    }, (), "agw's own: WebRTC client secrets and calls, and SIP calls, on a Realtime route (docs/webrtc.md)."),
    "sip": ({
        "webhookSecret": text("the signing secret of the OpenAI project's webhook, e.g. $OPENAI_WEBHOOK_SECRET (whsec_...)"),
        "timestampTolerance": {**DURATION, "description": "how far a delivery's webhook-timestamp may be off (10s to 1h; default 5m)"},
        "lines": array(ref("sipLine"), 1),
    }, ("webhookSecret", "lines"), "Phone calls: OpenAI's realtime.call.incoming webhook, verified, mapped, accepted or rejected."),
    "sipLine": ({
        "to": text("the dialed number: the user part of the To header's URI, exactly (e.g. +18005550100)"),
        "header": ref("sipHeaderMatch"), "consumer": text("the metadata.name of a key of this route's apiKey"),
        "session": {"type": "object", "required": ["model"], "description": (
            "the Realtime session the call is accepted with (OpenAI's fields: model, instructions, audio, ...)"
        )},
    }, ("session",), "Which calls (to, header, or neither: every call), billed to whom, answered how; the first match wins."),
    "sipHeaderMatch": ({"name": text("a SIP header of the INVITE"), "value": text("its exact value")}, ("name", "value"), "A SIP header."),
    "sideband": ({
        "reconnectAttempts": {"type": "integer", "minimum": 0, "maximum": 100, "description": "default 3"},
        "reconnectDelay": {**DURATION, "description": "the first wait before connecting again, doubling (default 250ms)"},
        "maxReconnectDelay": {**DURATION, "description": "the longest wait (default 5s)"},
        "failureMode": {**one_of("failClosed", "failOpen"), "description": (
            "a sideband that cannot come back: hang the call up (failClosed, default) or let it go on unmetered"
        )},
    }, (), "What a call supervisor does when its sideband drops."),
    "aiPolicy": ({
        "routes": map_of(one_of(*(t.value for t in RouteType if t not in UNSERVED_ROUTE_TYPES)), "path suffix to route type"),
        "promptGuard": ref("promptGuard"), "prompts": ref("prompts"),
        "defaults": map_of({}, "request body field to value, set when the body lacks it"),
        "overrides": map_of({}, "request body field to value, always set"),
        "modelAliases": map_of(text(), "requested model (exact, or with * wildcards) to the model sent"),
    }, (), "AI route types by path suffix, guards and prompts."),
    "promptGuard": ({
        "request": array(ref("requestGuard")), "response": array(ref("responseGuard")),
        "streaming": one_of("Disabled", "Enabled"),
        "holdChars": {"type": "integer", "minimum": 0, "maximum": 4096, "description": (
            "agw's own: the most characters of a streamed answer's newest text held back while they may be "
            "the start of a match, so one split across deltas is caught (default 64)"
        )},
        "holdForTranscript": text(
            "agw's own: hold a server-VAD response until its turn's transcript passes the request guards, at most this "
            "long (a duration such as 3s; default: not held)"
        ),
    }, (), "Guards on requests and responses (streaming: Enabled guards streamed answers too)."),
    "requestGuard": ({
        "regex": ref("regexGuard"), "webhook": ref("webhook"), "openAIModeration": ref("openAIModeration"),
        "scope": array(one_of(*(s.value for s in Scope)), 1), "rejection": ref("rejection"),
    }, (), "A request guard: exactly one of regex, webhook, openAIModeration."),
    "responseGuard": ({
        "regex": ref("regexGuard"), "webhook": ref("webhook"), "rejection": ref("rejection"),
    }, (), "A response guard: exactly one of regex, webhook."),
    "webhook": ({
        "target": ref("webhookTarget"), "forwardHeaderMatches": array(ref("headerMatch")),
        "failureMode": one_of("failClosed", "failOpen"),
        "timeout": text("agw's own: a duration such as 500ms (default 10s)"),
    }, ("target",), "agentgateway's guardrail webhook (POST /request, /response)."),
    "webhookTarget": ({"host": text("host:port, plain HTTP")}, ("host",), "Where the webhook is."),
    "headerMatch": ({"name": text(), "value": ref("headerValueMatch")}, ("name", "value"), "A request header to forward."),
    "headerValueMatch": ({"exact": text(), "regex": text("a Python regular expression")}, (), "Exactly one of exact, regex."),
    "openAIModeration": ({
        "model": text("default omni-moderation-latest"), "policies": ref("moderationPolicies"),
        "url": text("agw's own: the moderation endpoint (default https://api.openai.com/v1/moderations)"),
        "timeout": text("agw's own: a duration such as 500ms (default 10s)"),
        "failureMode": {**one_of("failClosed", "failOpen"), "description": "agw's own (default failOpen, as agentgateway)"},
    }, (), "OpenAI's moderation endpoint; a flagged input rejects."),
    "moderationPolicies": ({"backendAuth": ref("backendAuth"), "backendTLS": ref("backendTLS")}, (), "The moderation call's key and TLS."),
    "regexGuard": ({
        "action": one_of("mask", "reject"), "rules": array(ref("regexRule"), 1),
    }, ("rules",), "Regex rules and what a match does (default mask)."),
    "regexRule": ({
        "builtin": one_of(*(b.value for b in Builtin)), "pattern": text("a Python regular expression"),
    }, (), "Exactly one of builtin, pattern."),
    "rejection": ({
        "status": {"type": "integer", "minimum": 200, "maximum": 599}, "headers": ref("requestTransform"),
        "body": text("sent as it is (default: an OpenAI-shaped error with agentgateway's text)"),
    }, (), "The answer to a rejected request (default 403)."),
    "prompts": ({"prepend": array(ref("promptMessage")), "append": array(ref("promptMessage"))}, (), "Messages around the client's."),
    "promptMessage": ({"role": text(), "content": text()}, ("role", "content"), "A chat message."),
    "backendAuth": ({
        "key": {"anyOf": [text("the provider key, e.g. $OPENAI_API_KEY"), ref("backendKey")]},
    }, ("key",), "The key agw sends upstream."),
    "backendKey": ({"value": text("the provider key"), "location": ref("authLocation")}, ("value",), "A key and where it goes."),
    "authLocation": ({"header": ref("authHeader")}, ("header",), "Where the key goes (a header)."),
    "authHeader": ({
        "name": text("e.g. api-key (Azure) or authorization"), "prefix": text("put before the key, e.g. 'Bearer '"),
    }, ("name",), "A header carrying the key."),
    "transformations": ({"request": ref("requestTransform")}, (), "Header changes."),
    "requestTransform": ({
        "remove": array(text()),
        "add": map_of({"type": ["string", "number"]}, "header name to value"),
        "set": map_of({"type": ["string", "number"]}, "header name to value"),
    }, (), "Request header changes."),
    "backendTLS": ({"root": text("a PEM file of trusted CAs"), "hostname": text()}, (), "TLS to the backend."),
    "apiKey": ({
        "keys": array(ref("apiKeyEntry")), "mode": caseless("strict", "optional", "permissive"),
        "location": ref("apiKeyLocation"),
    }, ("keys",), "Client keys."),
    "apiKeyLocation": ({
        "header": ref("authHeader"), "queryParameter": ref("queryParameter"),
    }, (), "Where a client key is read (default: the authorization header after 'Bearer ')."),
    "queryParameter": ({"name": text("e.g. api-key")}, ("name",), "A query parameter carrying the key."),
    "apiKeyEntry": ({
        "key": text(), "keyHash": {"type": "string", "pattern": "^sha256:[0-9a-fA-F]{64}$"},
        "metadata": {"type": "object", "description": "anything; metadata.name is the consumer"},
        "allowedModels": array(text("a model name, one '*' at most")), "budgets": array(ref("budget")),
        "allowPassthrough": {"type": "boolean", "description": (
            "agw's own, not agentgateway's: a key with allowedModels or budgets may use passthrough paths, "
            "where neither is checked and nothing is metered (default false)"
        )},
    }, (), "One client key: exactly one of key, keyHash."),
    "localRateLimit": ({
        "maxTokens": POSITIVE, "tokensPerFill": POSITIVE, "fillInterval": DURATION, "type": one_of("requests", "tokens"),
    }, ("maxTokens", "tokensPerFill", "fillInterval"), "A token bucket."),
    "budget": ({
        "name": text(), "limit": ref("budgetLimit"), "window": ref("budgetWindow"), "onBudgetExceeded": one_of("Block", "Audit"),
    }, ("name", "limit", "window"), "A spending limit."),
    "budgetLimit": ({"unit": one_of("USD", "Tokens"), "amount": {"type": ["number", "string"]}}, ("unit", "amount"), "How much."),
    "budgetWindow": ({"rolling": DURATION}, ("rolling",), "Over how long."),
}


# The loader expands $VAR and ${VAR} in every string before checking it, so
# a constrained string may also be a reference to an environment variable.
VARIABLE = {"type": "string", "pattern": r"\$(\{[^}]*\}|[A-Za-z_])", "description": "expanded from the environment"}


def _or_variable(fragment: Any) -> Any:
    """C{fragment}, with every constrained string also accepting a variable reference."""
    if isinstance(fragment, list):
        return [_or_variable(item) for item in fragment]
    if not isinstance(fragment, dict):
        return fragment
    walked = {key: _or_variable(value) for key, value in fragment.items()}
    if walked.get("type") == "string" and ("pattern" in walked or "enum" in walked):
        return {"anyOf": [walked, VARIABLE]}
    return walked


def fields_of(kind: str) -> frozenset[str]:
    """The fields agw accepts in a mapping of C{kind}."""
    return frozenset(SHAPES[kind][0])


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the config files agw accepts."""
    definitions = {}
    for kind, (fields, required, description) in SHAPES.items():
        definition: Fragment = {
            "type": "object", "description": description, "properties": _or_variable(fields), "additionalProperties": False,
        }
        if required:
            definition["required"] = list(required)
        definitions[kind] = {**definition, **EXTRA.get(kind, {})}
    top = definitions.pop("top")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, "title": "agw config", **top, "$defs": definitions}
