"""
Headers a client must not choose: credentials and billing selectors never
go upstream beside the backend key, hop-by-hop headers (and those named in
Connection) are dropped, X-Forwarded-For is set from the connection.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from agw.config import Policies, Secret
from agw.routing import response_header_pairs, upstream_headers
from tests.support import BACKEND_KEY, CLIENT_KEY, GatewayTestCase, on_twisted_web, open_client, raw_exchange, recv_event

CHOSEN_BY_CLIENT = {
    "Authorization": f"Bearer {CLIENT_KEY}",
    "api-key": CLIENT_KEY,
    "x-api-key": CLIENT_KEY,
    "OpenAI-Organization": "org-attacker",
    "OpenAI-Project": "proj-attacker",
    "Cookie": "session=stolen",
    "X-Forwarded-For": "203.0.113.9",
    "Forwarded": "for=203.0.113.9",
    "X-Real-IP": "203.0.113.9",
    "Connection": "keep-alive, X-Hop-Secret",
    "X-Hop-Secret": "hop",
    "Keep-Alive": "timeout=5",
    "X-Request-Id": "req-1",
}
NEVER_UPSTREAM = (
    "api-key", "x-api-key", "openai-organization", "openai-project", "cookie", "forwarded", "x-real-ip",
    "x-hop-secret", "keep-alive",
)


class UpstreamHeadersTests(SynchronousTestCase):
    def test_backend_key_strips_every_client_credential(self) -> None:
        client = [(k.lower(), v) for k, v in CHOSEN_BY_CLIENT.items()]
        headers = upstream_headers(client, Policies(backend_key=Secret("sk-b")), client_address="10.1.2.3")
        names = [name for name, _ in headers]
        for name in NEVER_UPSTREAM:
            self.assertNotIn(name, names)
        self.assertEqual(dict(headers)["authorization"], "Bearer sk-b")
        self.assertEqual([v for n, v in headers if n == "x-forwarded-for"], ["10.1.2.3"])
        self.assertEqual(dict(headers)["x-request-id"], "req-1")

    def test_without_backend_key_the_client_authenticates_as_itself(self) -> None:
        client = [("authorization", "Bearer own"), ("openai-project", "p"), ("connection", "x-a"), ("x-a", "1")]
        headers = dict(upstream_headers(client, Policies()))
        self.assertEqual(headers, {"authorization": "Bearer own", "openai-project": "p"})

    def test_response_headers_named_in_connection_are_dropped(self) -> None:
        upstream = [(b"connection", b"close, x-internal"), (b"x-internal", b"1"), (b"transfer-encoding", b"chunked"), (b"x-request-id", b"r")]
        self.assertEqual(response_header_pairs(upstream), [(b"x-request-id", b"r")])


class ForwardedHeadersTests(GatewayTestCase):
    @inlineCallbacks
    def test_http_request(self) -> Any:
        response = yield treq.post(
            f"{self.http_base}/chat/completions", json={"model": "m", "messages": []}, headers=CHOSEN_BY_CLIENT,
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        seen = self.fake.http_requests[-1].headers
        for name in NEVER_UPSTREAM:
            self.assertNotIn(name, seen)
        self.assertEqual(seen["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertEqual(seen["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(seen["x-request-id"], "req-1")

    @inlineCallbacks
    def test_an_answer_without_content_encoding_gets_none(self) -> Any:
        # Twisted's ContentDecoderAgent sets an empty Content-Encoding on an answer that had none;
        # passed on, it makes clients (treq among them) treat the body as encoded and hide its length.
        raw = yield deferToThread(raw_exchange, self.port, (
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 31\r\n'
            b'Connection: close\r\n\r\n{"model": "m", "messages": []}\n'
        ))
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"200 ok", head.split(b"\r\n")[0])
        self.assertNotIn(b"content-encoding", head)
        # One Date and one Server: the gateway's, as nginx (the provider's are dropped).
        self.assertEqual([line.split(b":")[0] for line in head.split(b"\r\n")].count(b"date"), 1)
        self.assertEqual([line.split(b":")[0] for line in head.split(b"\r\n")].count(b"server"), 1)

    @inlineCallbacks
    def test_realtime_handshake(self) -> Any:
        # websockets sets its own Connection header; the rest are the client's.
        headers = {k: v for k, v in CHOSEN_BY_CLIENT.items() if k not in ("Connection", "X-Hop-Secret", "Keep-Alive")}
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m", additional_headers=headers)
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        seen = self.fake.handshakes[-1].headers
        for name in NEVER_UPSTREAM:
            self.assertNotIn(name, seen)
        self.assertEqual(seen["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertEqual(seen["x-forwarded-for"], "127.0.0.1")


class KeyFromASecretFileTests(GatewayTestCase):
    """
    A backend key as Kubernetes secrets and `echo > file` leave it, with a
    trailing newline: the key is the text before it. Kept, the newline
    would end the Realtime handshake's Authorization line early (the
    upstream sees a blank line inside the head) and reach HTTP upstreams
    as part of the key.
    """

    backend_key_env = BACKEND_KEY + "\r\n"

    @inlineCallbacks
    def test_realtime_handshake_carries_the_key_without_its_newline(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        self.assertEqual(self.fake.handshakes[-1].headers["authorization"], f"Bearer {BACKEND_KEY}")

    @inlineCallbacks
    def test_http_request_carries_the_key_without_its_newline(self) -> Any:
        response = yield treq.post(f"{self.http_base}/chat/completions", json={"model": "m", "messages": []}, persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(self.fake.http_requests[-1].headers["authorization"], f"Bearer {BACKEND_KEY}")


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebUpstreamHeadersTests = on_twisted_web(UpstreamHeadersTests)
TwistedWebForwardedHeadersTests = on_twisted_web(ForwardedHeadersTests)
