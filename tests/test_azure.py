"""
Azure OpenAI: the seed walkthrough with C{azure} in place of C{openAI},
Realtime through the openai SDK and completions, against the fake speaking
Azure; the upstream sees C{api-key} and Azure's paths for C{v1}, C{preview}
and dated versions, never the client's key; config refusals.
"""

from __future__ import annotations

from typing import Any

import treq
from openai import OpenAI
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from agw.config import ConfigError, parse_config
from agw.routing import BackendTarget, NoDeployment
from agw.testing import REALTIME_MODEL
from tests.support import BACKEND_KEY, CLIENT_KEY, TOKEN_METRIC, GatewayTestCase, run_session, token_sums

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
