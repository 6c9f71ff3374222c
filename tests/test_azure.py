"""
Azure OpenAI: the seed walkthrough with C{azure} in place of C{openAI},
Realtime through the openai SDK and completions, against the fake speaking
Azure; the upstream sees C{api-key} and Azure's paths for C{v1}, C{preview}
and dated versions, never the client's key; config refusals.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
import yaml
from openai import OpenAI
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.config import ConfigError, parse_config
from agw.routing import BackendTarget, NoDeployment
from agw.testing import REALTIME_MODEL
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    TOKEN_METRIC,
    GatewayTestCase,
    catalog_price,
    handshake_status,
    listening_fake,
    open_client,
    recv_event,
    registry_samples,
    run_session,
    running_gateway,
    seed_config_text,
    token_sums,
)
from tests.test_budgets import TEAM_A, BudgetGateway, auth, budget_config, respond

AZURE = {"resourceName": "my-resource", "resourceType": "openAI"}


class AzureTestCase(GatewayTestCase):
    azure = AZURE

    def complete(self) -> Deferred[Any]:
        def run() -> Any:
            with OpenAI(api_key=CLIENT_KEY, base_url=self.http_base, max_retries=0) as client:
                return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        return deferToThread(run)

    def assert_keys(self, headers: dict[str, str]) -> None:
        """Azure's key header carries the backend key; the client's key is nowhere."""
        self.assertEqual(headers["api-key"], BACKEND_KEY)
        self.assertNotIn("authorization", headers)
        self.assertNotIn(CLIENT_KEY, repr(headers))


class AzureV1Tests(AzureTestCase):
    @inlineCallbacks
    def test_realtime_walkthrough_meters_every_token(self) -> Any:
        done = yield deferToThread(run_session, self.ws_base, 3)
        self.assertEqual(len(done), 3)
        samples = yield self.scrape()
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))
        (handshake,) = self.fake.handshakes
        self.assertEqual(handshake.uri, "/openai/v1/realtime?model=gpt-realtime")
        self.assert_keys(handshake.headers)
        labels = dict(next(labels for name, labels in samples if name == TOKEN_METRIC + "_count"))
        self.assertEqual(labels["gen_ai_response_model"], REALTIME_MODEL)

    @inlineCallbacks
    def test_completion_meters_every_token(self) -> Any:
        completion = yield self.complete()
        self.assertEqual(completion.choices[0].message.content, "Hello!")
        (seen,) = self.fake.http_requests
        self.assertEqual(seen.uri, "/openai/v1/chat/completions")
        self.assertEqual(seen.json["model"], "gpt-4")  # the deployment the config names
        self.assert_keys(seen.headers)
        samples = yield self.scrape()
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))

    @inlineCallbacks
    def test_client_query_is_kept(self) -> Any:
        response = yield treq.get(f"{self.http_base}/models?limit=2", headers={"authorization": f"Bearer {CLIENT_KEY}"}, persistent=False)
        yield response.text()
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fake.http_requests[0].uri, "/openai/v1/models?limit=2")
        self.assert_keys(self.fake.http_requests[0].headers)


class AzurePreviewTests(AzureTestCase):
    azure = {**AZURE, "apiVersion": "preview"}

    @inlineCallbacks
    def test_paths(self) -> Any:
        yield self.complete()
        self.assertEqual(self.fake.http_requests[0].uri, "/openai/v1/chat/completions?api-version=preview")
        yield deferToThread(run_session, self.ws_base, 1)
        # No api-version on the GA Realtime path: Azure answers 401 to one (the fake too).
        self.assertEqual(self.fake.handshakes[0].uri, "/openai/v1/realtime?model=gpt-realtime")


class AzureDatedTests(AzureTestCase):
    azure = {**AZURE, "apiVersion": "2025-04-01-preview"}

    @inlineCallbacks
    def test_paths_and_metering(self) -> Any:
        yield self.complete()
        (seen,) = self.fake.http_requests
        self.assertEqual(seen.uri, "/openai/deployments/gpt-4/chat/completions?api-version=2025-04-01-preview")
        self.assert_keys(seen.headers)
        yield deferToThread(run_session, self.ws_base, 2)
        (handshake,) = self.fake.handshakes
        self.assertEqual(handshake.uri, "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime")
        self.assert_keys(handshake.headers)
        samples = yield self.scrape()
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))


class FakeAzureTests(GatewayTestCase):
    @inlineCallbacks
    def test_fake_refuses_azure_paths_without_a_key(self) -> Any:
        url = f"http://127.0.0.1:{self.upstream_port}/openai/v1/chat/completions"
        response = yield treq.post(url, json={"model": "m", "messages": []}, persistent=False)
        yield response.text()
        self.assertEqual(response.code, 401)
        response = yield treq.post(url, json={"model": "m", "messages": []}, headers={"api-key": "k"}, persistent=False)
        yield response.text()
        self.assertEqual(response.code, 200)


CONFIG = """
binds:
- port: 3000
  listeners:
  - routes:
    - backends: [{{ai: {{name: a, provider: {provider}}}}}]
      policies: {policies}
"""


def load(provider: str, policies: str = "{}") -> Any:
    return parse_config(CONFIG.format(provider=provider, policies=policies), {})


class AzureConfigTests(SynchronousTestCase):
    def refusal(self, provider: str, policies: str = "{}") -> str:
        return str(self.assertRaises(ConfigError, load, provider, policies))

    def test_entra_id_refused(self) -> None:
        self.assertEqual(
            self.refusal("{azure: {resourceName: r, resourceType: openAI}}", "{backendAuth: {azure: {implicit: {}}}}"),
            "binds[0].listeners[0].routes[0].policies.backendAuth.azure: supported by agentgateway but not by agw yet (line 7)",
        )

    def test_bad_resource_type_refused(self) -> None:
        self.assertEqual(
            self.refusal("{azure: {resourceName: r, resourceType: cognitive}}"),
            "binds[0].listeners[0].routes[0].backends[0].ai.provider.azure.resourceType: expected openAI or foundry, got 'cognitive' (line 6)",
        )

    def test_hosts_and_defaults(self) -> None:
        backend = load("{azure: {resourceName: r, resourceType: openAI}}").binds[0].listeners[0].routes[0].backends[0]
        target = BackendTarget.from_backend(backend)
        self.assertEqual((target.host, target.port, target.tls, target.key_header), ("r.openai.azure.com", 443, True, ("api-key", "")))
        self.assertEqual(target.url("/v1/embeddings", ""), "https://r.openai.azure.com/openai/v1/embeddings")
        foundry = load("{azure: {resourceName: r, resourceType: foundry}}").binds[0].listeners[0].routes[0].backends[0]
        self.assertEqual(
            BackendTarget.from_backend(foundry).url("/v1/responses", ""),
            "https://r.services.ai.azure.com/api/projects/r/openai/v1/responses",
        )

    def test_older_azure_openai_is_the_same_thing(self) -> None:
        backend = load("{azureOpenAI: {host: h.openai.azure.com, apiVersion: 2024-10-21}}").binds[0].listeners[0].routes[0].backends[0]
        target = BackendTarget.from_backend(backend)
        self.assertEqual(
            target.url("/v1/chat/completions", "a=1", model="dep"),
            "https://h.openai.azure.com/openai/deployments/dep/chat/completions?a=1&api-version=2024-10-21",
        )
        self.assertRaises(NoDeployment, target.url, "/v1/chat/completions", "")

    def test_key_location(self) -> None:
        policies = load(
            "{openAI: {}}", "{backendAuth: {key: {value: k, location: {header: {name: X-Key, prefix: 'T '}}}}}"
        ).binds[0].listeners[0].routes[0].policies
        self.assertEqual(policies.backend_key_header, ("x-key", "T "))
        self.assertIn(
            "not by agw yet",
            self.refusal("{openAI: {}}", "{backendAuth: {key: {value: k, location: {queryParameter: {name: q}}}}}"),
        )


class AzureBudgetTests(TestCase):
    """A key's budget holds inside an Azure Realtime session as on OpenAI: refused in-protocol, then at the handshake."""

    timeout = 60

    @inlineCallbacks
    def test_budget_inside_an_azure_session(self) -> Any:
        fake, upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        config = yaml.safe_load(budget_config(upstream_port, database))
        for route in config["binds"][0]["listeners"][0]["routes"]:
            for backend in route["backends"]:
                model = (backend["ai"]["provider"]["openAI"] or {}).get("model")
                backend["ai"]["provider"] = {"azure": {**AZURE, **({"model": model} if model else {})}}
        agw = yield BudgetGateway(self, upstream_port, database, yaml.safe_dump(config)).start()

        def session() -> tuple[dict[str, Any], dict[str, Any]]:
            with open_client(agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                return respond(ws, "first"), respond(ws, "second")  # the first spends the 100 tokens

        first, second = yield deferToThread(session)
        self.assertEqual(first["type"], "response.done")
        self.assertEqual((second["type"], second["error"]["code"], second["error"]["event_id"]), ("error", "rate_limit_exceeded", "second"))
        self.assertEqual(len(fake.ledger), 1)
        self.assertEqual(fake.handshakes[0].uri, "/openai/v1/realtime?model=gpt-realtime")
        self.assertNotIn(TEAM_A, json.dumps(fake.handshakes[0].headers))
        status, _ = yield deferToThread(handshake_status, agw.url, **auth(TEAM_A))
        self.assertEqual(status, 429)
        self.assertEqual(len(fake.handshakes), 1)


class AzureDeploymentPriceTests(TestCase):
    """Azure names deployments: an operator prices one by naming it in the catalog, with its model's rates."""

    timeout = 60

    @inlineCallbacks
    def test_a_deployment_named_in_the_catalog_is_priced_exactly(self) -> Any:
        fake, upstream_port = yield listening_fake(self)
        fake.realtime_model = "voice-prod"  # the session reports the deployment, not the model behind it
        rates = {"input": "4", "cacheRead": "0.4", "output": "16", "inputAudio": "32", "cacheReadAudio": "0.4", "outputAudio": "64"}
        catalog = os.path.abspath(self.mktemp() + ".json")
        with open(catalog, "w") as f:
            json.dump({"providers": {"openai": {"models": {"voice-prod": {"rates": rates}}}}}, f)
        data = yaml.safe_load(seed_config_text(upstream_port, azure=AZURE))
        data["config"]["modelCatalog"] = [{"file": catalog}]
        gateway, _, port = yield running_gateway(self, yaml.safe_dump(data))

        def session() -> None:
            with open_client(f"ws://127.0.0.1:{port}/v1/realtime?model=voice-prod") as ws:
                recv_event(ws)
                respond(ws, "priced")

        yield deferToThread(session)
        samples = registry_samples(gateway.metrics.registry)
        cost = sum(value for (name, _), value in samples.items() if name == "agentgateway_gen_ai_client_cost_usd_total")
        self.assertAlmostEqual(cost, float(catalog_price(fake.ledger[0].usage)), places=12)
        lookups = {dict(labels)["status"] for (name, labels) in samples if name == "agentgateway_cost_catalog_lookups_total"}
        self.assertEqual(lookups, {"Exact"})
        self.assertEqual(fake.handshakes[0].uri, "/openai/v1/realtime?model=voice-prod")
