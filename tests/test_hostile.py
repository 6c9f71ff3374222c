"""
Hostile input handled per RFC 6455 without touching other sessions: invalid
UTF-8, garbage and oversized handshakes, non-JSON events.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed

from agw.realtime import RelayOptions
from tests.support import GatewayTestCase, on_twisted_web, open_client, raw_exchange, recv_event, wait_closed, wait_until


def invalid_utf8_frame() -> bytes:
    """A masked text frame whose payload is not UTF-8."""
    payload = b"\xff\xfe\xfd"
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def invalid_utf8_session(ws_base: str) -> int | None:
    """Open a session, send a text frame that is not UTF-8 (blocking: in a thread); the close code the client got."""
    bad = open_client(f"{ws_base}/realtime?model=m")
    recv_event(bad)
    bad.socket.sendall(invalid_utf8_frame())
    return wait_closed(bad)[0]


class HostileInputTests(GatewayTestCase):
    @inlineCallbacks
    def healthy_session(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        return ws

    @inlineCallbacks
    def assert_still_healthy(self, ws: Any) -> Any:
        def echo() -> dict[str, Any]:
            ws.send(json.dumps({"type": "test.echo", "ok": True}))
            return recv_event(ws)

        reply = yield deferToThread(echo)
        self.assertEqual(reply, {"type": "test.echo", "ok": True})

    @inlineCallbacks
    def test_invalid_utf8_closes_1007_others_unaffected(self) -> Any:
        # Frames pass through unvalidated: the provider refuses them (1007), and agw passes that on.
        healthy = yield self.healthy_session()
        code = yield deferToThread(invalid_utf8_session, self.ws_base)
        self.assertEqual(code, 1007)
        yield wait_until(lambda: self.fake.closes)
        yield self.assert_still_healthy(healthy)

    @inlineCallbacks
    def test_invalid_utf8_from_provider_is_the_clients_to_refuse(self) -> Any:
        # The upstream leg does not validate UTF-8 (the client does): the
        # client's 1007 reaches the provider.
        bad = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        yield deferToThread(recv_event, bad)
        yield deferToThread(bad.send, json.dumps({"type": "test.invalid_utf8"}))

        def sent_close() -> Any:
            try:
                while True:
                    bad.recv(timeout=10)
            except ConnectionClosed as e:
                return e.sent.code if e.sent else None

        code = yield deferToThread(sent_close)
        self.assertEqual(code, 1007)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1007)

    @inlineCallbacks
    def test_non_json_text_is_relayed(self) -> Any:
        ws = yield self.healthy_session()

        def send_garbage() -> dict[str, Any]:
            ws.send("this is not json")
            return recv_event(ws)

        reply = yield deferToThread(send_garbage)
        self.assertEqual(reply["type"], "error")  # the provider's answer, relayed
        yield self.assert_still_healthy(ws)

    @inlineCallbacks
    def test_garbage_instead_of_handshake(self) -> Any:
        healthy = yield self.healthy_session()
        answer = yield deferToThread(raw_exchange, self.port, b"\x16\x03\x01garbage\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer[:40])
        yield self.assert_still_healthy(healthy)

    @inlineCallbacks
    def test_oversized_headers_refused(self) -> Any:
        request = b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n"
        answer = yield deferToThread(raw_exchange, self.port, request)
        # twisted.web drops a connection whose header line is too long
        # (sometimes after a 400); either way nothing goes upstream.
        self.assertTrue(answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:40])
        self.assertEqual(self.fake.handshakes, [])

    @inlineCallbacks
    def test_invented_methods_do_not_grow_metrics(self) -> Any:
        # Every distinct method a client invents would otherwise be a new
        # series of two metrics, kept for the life of the process.
        for i in range(20):
            request = b"QUERYX%d /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i
            answer = yield deferToThread(raw_exchange, self.port, request)
            self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer[:40])
        text = yield self.metrics_text()
        self.assertNotIn("QUERYX", text)
        self.assertIn('method="_OTHER"', text)


class MessageRelayTests(GatewayTestCase):
    """With --message-relay agw validates client text itself, as before the pass-through."""

    relay_options = RelayOptions(pass_through=False)

    @inlineCallbacks
    def test_invalid_utf8_closes_1007_at_agw(self) -> Any:
        code = yield deferToThread(invalid_utf8_session, self.ws_base)
        self.assertEqual(code, 1007)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)  # agw failed the client: the provider is told so


class IdleDetectionTests(GatewayTestCase):
    relay_options = RelayOptions(ping_interval=0.2, ping_timeout=0.3)

    @inlineCallbacks
    def test_silent_client_is_detected_and_upstream_closed(self) -> Any:
        """A client that never answers pings is dropped; the upstream leg gets 1011."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(
            b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = yield deferToThread(sock.recv, 4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer[:40])
        # ... and now silence: pings go unanswered.
        yield wait_until(lambda: self.fake.closes, timeout=10)
        self.assertEqual(self.fake.closes[0][0], 1011)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebHostileInputTests = on_twisted_web(HostileInputTests)
