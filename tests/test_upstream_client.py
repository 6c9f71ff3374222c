"""
The upstream client's connections: each route's TLS settings are its own
(two routes to one host and port do not share connections or trust), and
a pooled connection the upstream closed is retried once for a request
that is safe to send again, never for one with a body.
"""

from __future__ import annotations

from typing import Any

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.testing import FakeOpenAI, TestCA
from tests.support import running_gateway, seed_config_text
from tests.wire_support import RawRequest, answer, gateway_to, raw_request


class TLSPerRouteTests(TestCase):
    """Two routes to one host:port, one trusting the provider's CA and one another CA."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA.make()
        self.fake = FakeOpenAI()
        listening = yield self.fake.listen(reactor, tls=self.ca.server_options())
        self.addCleanup(listening.stopListening)
        trusted, other = self.mktemp() + ".pem", self.mktemp() + ".pem"
        with open(trusted, "wb") as f:
            f.write(self.ca.ca_pem)
        with open(other, "wb") as f:
            f.write(TestCA.make().ca_pem)
        config = yaml.safe_load(seed_config_text(listening.getHost().port))
        routes = config["binds"][0]["listeners"][0]["routes"]
        right = routes[1]
        wrong = yaml.safe_load(yaml.safe_dump(right))
        right["matches"] = [{"path": {"pathPrefix": "/v1/chat"}}]
        right["policies"]["backendTLS"] = {"root": trusted, "hostname": self.ca.hostname}
        # Registered last: before each route's TLS was its own, its settings were every route's.
        wrong["matches"] = [{"path": {"pathPrefix": "/v1/embeddings"}}]
        wrong["policies"]["backendTLS"] = {"root": other, "hostname": self.ca.hostname}
        routes[:] = [right, wrong]
        _, _, self.port = yield running_gateway(self, yaml.safe_dump(config))

    @inlineCallbacks
    def post(self, path: str) -> Any:
        response = yield treq.post(
            f"http://127.0.0.1:{self.port}{path}", json={"model": "m", "input": "x", "messages": []}, persistent=False,
        )
        return response.code, (yield response.json())

    @inlineCallbacks
    def test_each_route_verifies_with_its_own_trust_root(self) -> Any:
        code, _ = yield self.post("/v1/chat/completions")
        self.assertEqual(code, 200)
        # The same host and port, a connection to it pooled: this route still trusts only its own CA.
        code, body = yield self.post("/v1/embeddings")
        self.assertEqual((code, body["error"]["code"]), (502, "upstream_tls_error"))
        self.assertEqual([r.uri for r in self.fake.http_requests], ["/v1/chat/completions"])


def one_answer_per_connection(request: RawRequest) -> tuple[bytes, bool]:
    """Answers the first request of a connection; closes on the next one without a byte (an idle timeout's race)."""
    if request.index > 0:
        return b"", True
    return answer(b"200 OK", [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")], b"{}")


class StalePooledConnectionTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, _ = yield gateway_to(self, one_answer_per_connection)

    def send(self, method: bytes, body: bytes = b"") -> Any:
        head = b"%s /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" % method
        if body:
            head += b"Content-Length: %d\r\n" % len(body)
        return deferToThread(raw_request, self.port, head + b"\r\n" + body, method == b"HEAD")

    @inlineCallbacks
    def test_a_get_is_retried_on_a_fresh_connection(self) -> Any:
        for _ in range(3):
            head, body, _ = yield self.send(b"GET")
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            self.assertEqual(body, b"{}")
        self.assertGreaterEqual(self.upstream.connections, 2)

    @inlineCallbacks
    def test_a_request_with_a_body_is_not_sent_twice(self) -> Any:
        head, _, _ = yield self.send(b"POST", b"upload")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        head, body, _ = yield self.send(b"POST", b"upload")
        self.assertTrue(head.startswith(b"HTTP/1.1 502"), head)
        self.assertIn(b"upstream_closed", body)
        self.assertEqual([r.method for r in self.upstream.requests], [b"POST", b"POST"])  # not a third

