"""
A Realtime session's handshake on agw's front door goes straight to the
relay's Autobahn protocol (L{agw.serve._takeover}), without a twisted.web
channel and request built for it; everything around it behaves as it did
through twisted.web (the same tests on --legacy-http): the 426 for a GET
without an upgrade, other upgrades, a head over twisted.web's size, an
upgrade pipelined behind completions, the handshake the provider gets, the
peer the session records.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread

from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    GatewayTestCase,
    on_twisted_web,
    open_client,
    raw_exchange,
    recv_event,
    status_and_json,
    wait_until,
)
from tests.wire_support import read_until

COMPLETION = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(extra: bytes = b"", target: bytes = b"/v1/realtime?model=gpt-realtime", protocol: bytes = b"websocket") -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: gw\r\nUpgrade: %s\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n%s\r\n" % (target, protocol, KEY, CLIENT_KEY.encode(), extra))


def completion() -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(COMPLETION), COMPLETION))


def masked_text(payload: bytes) -> bytes:
    """One masked text frame, as a client sends it."""
    mask = os.urandom(4)
    head = struct.pack("!BB", 0x81, 0x80 | len(payload)) if len(payload) < 126 else struct.pack("!BBH", 0x81, 0xFE, len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def one_answer(port: int, data: bytes) -> bytes:
    """The head of the one answer to C{data}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_until(sock, b"\r\n\r\n")


class UpgradeTests(GatewayTestCase):
    """What a client sees of a Realtime handshake and what is around it, on either path."""

    @inlineCallbacks
    def test_a_get_without_an_upgrade_is_426_in_openais_shape(self) -> Any:
        answer = yield deferToThread(raw_exchange, self.port, b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, body = status_and_json(answer)
        self.assertEqual((status, body["error"]["code"]), (426, "upgrade_required"))
        self.assertIn(b"\r\nupgrade: websocket\r\n", answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n")

    @inlineCallbacks
    def test_an_upgrade_to_another_protocol_is_426(self) -> Any:
        answer = yield deferToThread(one_answer, self.port, upgrade(protocol=b"h2c"))
        self.assertEqual(answer[:12], b"HTTP/1.1 426")
        self.assertEqual(self.fake.handshakes, [])

    @inlineCallbacks
    def test_a_head_over_twisted_webs_size_is_refused(self) -> Any:
        # Within llhttp's limits, over twisted.web's (16 KiB in all): twisted.web's 400, as before.
        big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 5000) for i in range(4))
        answer = yield deferToThread(raw_exchange, self.port, upgrade(big))
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer[:40])
        self.assertEqual(self.fake.handshakes, [])

    @inlineCallbacks
    def test_an_upgrade_pipelined_behind_completions(self) -> Any:
        def run() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(completion() + completion() + upgrade())
                answers = read_until(sock, b"session.created")
                sock.sendall(masked_text(json.dumps({"type": "test.echo", "n": 7}).encode()))
                return answers, read_until(sock, b"test.echo")

        answers, echoed = yield deferToThread(run)
        self.assertEqual(re.findall(rb"HTTP/1.1 (\d+)", answers), [b"200", b"200", b"101"])
        self.assertIn(b'"n": 7', echoed)
        self.assertEqual(len(self.fake.handshakes), 1)

    @inlineCallbacks
    def test_the_provider_gets_the_handshake_as_twisted_web_passed_it_on(self) -> Any:
        # The target normalised, a header sent twice one value, the client's X-Forwarded-For replaced.
        extra = b"X-Custom: a\r\nx-custom:  b \r\nX-Forwarded-For: 9.9.9.9\r\nUser-Agent: probe\r\n"
        request = upgrade(extra, target=b"/v1//real%74ime/?model=gpt-realtime&x=%41")

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(request)
                return read_until(sock, b"session.created")

        self.assertTrue((yield deferToThread(run)).startswith(b"HTTP/1.1 101"))
        handshake = self.fake.handshakes[-1]
        self.assertEqual(handshake.uri, "/v1/realtime?model=gpt-realtime&x=%41")
        seen = {name: handshake.headers.get(name) for name in ("x-custom", "x-forwarded-for", "user-agent", "authorization")}
        self.assertEqual(seen, {"x-custom": "a,b", "x-forwarded-for": "127.0.0.1", "user-agent": "probe",
                                "authorization": f"Bearer {BACKEND_KEY}"})

    @inlineCallbacks
    def test_the_session_records_the_clients_address(self) -> Any:
        def run() -> Any:
            with open_client(f"{self.ws_base}/realtime?model=gpt-realtime") as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "response.create"}))
                while recv_event(ws)["type"] != "response.done":
                    pass
                return ws.local_address

        address = yield deferToThread(run)
        yield wait_until(lambda: "src.addr" in self.access_log.getvalue())
        lines = [json.loads(line) for line in self.access_log.getvalue().splitlines()]
        self.assertEqual({line["src.addr"] for line in lines if "src.addr" in line}, {"%s:%d" % address[:2]})
        self.assertEqual(self.fake.handshakes[0].headers["x-forwarded-for"], "127.0.0.1")


TwistedWebUpgradeTests = on_twisted_web(UpgradeTests)


class TakenOverTests(GatewayTestCase):
    """
    The front door's own path: no twisted.web request for a session; the
    door's timer stops at the handshake; what follows the head in its read
    is the session's (through twisted.web it was lost).
    """

    def count_web_requests(self) -> list[Any]:
        site, made = self.service.site_of(0), []
        factory = site.requestFactory

        def counted(*args: Any, **kwargs: Any) -> Any:
            made.append(factory(*args, **kwargs))
            return made[-1]

        site.requestFactory = counted
        self.addCleanup(setattr, site, "requestFactory", factory)
        return made

    @inlineCallbacks
    def test_a_session_makes_no_twisted_web_request(self) -> Any:
        made = self.count_web_requests()

        def run() -> str:
            with open_client(f"{self.ws_base}/realtime?model=gpt-realtime") as ws:
                return recv_event(ws)["type"]

        self.assertEqual((yield deferToThread(run)), "session.created")
        self.assertEqual(made, [])
        # The WebRTC endpoints are still twisted.web's: the count counts.
        answer = yield deferToThread(raw_exchange, self.port, b"GET /v1/realtime/calls HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer[:40])
        self.assertEqual(len(made), 1)

    @inlineCallbacks
    def test_a_session_outlives_the_doors_timeout(self) -> Any:
        # The door's one timer (a head's arrival, an idle connection) is not a session's: Autobahn's are.
        site = self.service.site_of(0)
        clock, site.upload_clock = site.upload_clock, Clock()
        self.addCleanup(setattr, site, "upload_clock", clock)

        def run() -> dict[str, Any]:
            with open_client(f"{self.ws_base}/realtime?model=gpt-realtime") as ws:
                recv_event(ws)
                blockingCallFromThread(reactor, site.upload_clock.advance, site.timeOut * 3)
                ws.send(json.dumps({"type": "test.echo", "n": 3}))
                return recv_event(ws)

        self.assertEqual((yield deferToThread(run)), {"type": "test.echo", "n": 3})

    @inlineCallbacks
    def test_an_event_in_the_handshakes_write_reaches_the_provider(self) -> Any:
        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(upgrade() + masked_text(json.dumps({"type": "test.echo", "n": 9}).encode()))
                return read_until(sock, b"test.echo")

        self.assertIn(b"HTTP/1.1 101", (yield deferToThread(run)))
