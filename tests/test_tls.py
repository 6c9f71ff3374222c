"""
TLS to the provider, verified for real: the fake serves TLS with a
certificate from a throwaway CA; agw trusts that CA through agentgateway's
C{backendTLS} policy, and refuses a provider whose certificate it cannot
verify, without sending it anything.
"""

from __future__ import annotations

from typing import Any

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from agw import Gateway, parse_config
from agw.http import TargetEndpoints
from agw.testing import REALTIME_MODEL, FakeOpenAI, TestCA
from tests.support import (
    BACKEND_KEY,
    handshake_status,
    registry_samples,
    run_session,
    seed_config_text,
    token_sums,
    wait_until,
)


class BackendTLSTests(TestCase):
    @inlineCallbacks
    def gateway_for(self, trusted: TestCA) -> Any:
        """agw (seed config) to a TLS fake serving C{self.ca}'s certificate, trusting C{trusted}'s CA."""
        root = self.mktemp() + ".pem"
        with open(root, "wb") as f:
            f.write(trusted.ca_pem)
        config = yaml.safe_load(seed_config_text(self.upstream_port))
        for route in config["binds"][0]["listeners"][0]["routes"]:
            route["policies"]["backendTLS"] = {"root": root, "hostname": self.ca.hostname}
        gateway = Gateway(parse_config(yaml.safe_dump(config), {"OPENAI_API_KEY": BACKEND_KEY}))
        service = gateway.service(interface="127.0.0.1", drain_period=0)
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_until(service.is_ready)
        return gateway, service.port_of(0)

    @inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA.make()
        self.fake = FakeOpenAI()
        listening = yield self.fake.listen(reactor, tls=self.ca.server_options())
        self.addCleanup(listening.stopListening)
        self.upstream_port = listening.getHost().port

    @inlineCallbacks
    def test_realtime_and_http_over_verified_tls(self) -> Any:
        gateway, port = yield self.gateway_for(self.ca)
        done = yield deferToThread(run_session, f"ws://127.0.0.1:{port}/v1", 2)
        self.assertEqual(len(done), 2)
        response = yield treq.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m", "messages": []}, persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(self.fake.http_requests[-1].headers["authorization"], f"Bearer {BACKEND_KEY}")
        counted = token_sums(registry_samples(gateway.metrics.registry))
        self.assertEqual(counted[("chat", REALTIME_MODEL, "output")], self.fake.billed()[("chat", REALTIME_MODEL, "output")])
        yield gateway.close_sessions()

    @inlineCallbacks
    def test_unverifiable_provider_gets_nothing(self) -> Any:
        gateway, port = yield self.gateway_for(TestCA.make())  # trusts another CA
        status, _ = yield deferToThread(handshake_status, f"ws://127.0.0.1:{port}/v1/realtime?model=m")
        self.assertEqual(status, 502)
        response = yield treq.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m", "messages": []}, persistent=False,
        )
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (502, "upstream_tls_error"))
        self.assertEqual((self.fake.handshakes, self.fake.http_requests), ([], []))
        self.assertEqual(self.flushLoggedErrors(), [])
        yield gateway.close_sessions()


class TargetEndpointsTests(SynchronousTestCase):
    """The upstream client's endpoints: made once per scheme, host and port."""

    def test_one_endpoint_per_origin(self) -> None:
        endpoints = TargetEndpoints(MemoryReactor(), connect_timeout=3.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"https://api.example:443/v1/chat/completions"))
        again = endpoints.endpointForURI(URI.fromBytes(b"https://api.example/v1/embeddings"))
        plain = endpoints.endpointForURI(URI.fromBytes(b"http://api.example:443/v1/embeddings"))
        self.assertIs(first, again)
        self.assertIsNot(first, plain)
        self.assertIsInstance(plain, HostnameEndpoint)

    def test_other_schemes_refused(self) -> None:
        endpoints = TargetEndpoints(MemoryReactor(), connect_timeout=3.0)
        self.assertRaises(SchemeNotSupported, endpoints.endpointForURI, URI.fromBytes(b"ftp://api.example/x"))

    def test_bounded(self) -> None:
        endpoints = TargetEndpoints(MemoryReactor(), connect_timeout=3.0)
        for port in range(1, 3000):
            endpoints.endpointForURI(URI.fromBytes(b"http://h:%d/" % port))
        self.assertLessEqual(len(endpoints._endpoints), TargetEndpoints.max_endpoints)
