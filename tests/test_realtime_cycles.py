"""
A finished Realtime session leaves no reference cycle behind: its legs,
their Deferreds, frame readers and validators, the HTTP request its upgrade
came in, go when it ends, not at the next garbage collection (as a finished
HTTP request does: see C{NoCyclesTests} in tests/test_front_door.py).
Whichever way it ends: the client closes, the provider closes, the
client's TCP connection just goes, or the client leaves with a response
in flight (the upstream leg stays to cancel it and read its usage); to a
provider by address, or by name over TLS (where two cycles inside Twisted
are excused, see L{TLSProviderCycleTests}).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread

from agw.testing import FakeOpenAI, TestCA
from tests.support import CLIENT_KEY, GatewayTestCase, running_gateway, seed_config_text, wait_until
from tests.wire_support import read_until

SESSIONS = 10
WARM_UP = 3
CLOSE = 0x8
# What a cycle is counted for: agw's, Twisted's and Autobahn's objects, the fake upstream's side included
# (but for its own types, agw.testing: it keeps its sessions in fake.sessions anyway).
OURS = ("agw.", "twisted.", "autobahn.")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def read_to_end(sock: socket.socket) -> None:
    """Read until the server ends the TCP connection (a server that closed the handshake it began aborts it)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def open_session_started(port: int) -> socket.socket:
    """A Realtime session through agw on a raw socket, read up to session.created (blocking)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode())
    read_until(sock, b"session.created")
    return sock


def open_session(port: int) -> socket.socket:
    """L{open_session_started}, then one response, so that messages go both ways (and usage is read)."""
    sock = open_session_started(port)
    sock.sendall(client_frame(0x1, json.dumps({"type": "response.create"}).encode()))
    read_until(sock, b"response.done")
    return sock


def close_normally(sock: socket.socket) -> None:
    """The client's close handshake (1000), then the server ends TCP."""
    sock.sendall(client_frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
    read_to_end(sock)
    sock.close()


def held_by_twisted(garbage: list[Any]) -> set[int]:
    """
    The ids of the objects in C{garbage} that two cycles inside Twisted
    hold, out of agw's reach:

      - a frame of Twisted's TLS layer. A TLS connection its peer ends
        without TLS's own close (the fake, like Autobahn servers, aborts TCP
        after a close handshake it began) fails in OpenSSL;
        C{TLSMemoryBIOProtocol._flushReceiveBIO} keeps that failure in a
        local variable, and the failure holds its traceback: that frame, and
        through it the frames it was called from (the connection's
        C{connectionLost} calls, with their transport and reason). It holds
        the TCP transport of agw's upstream leg, with its connector and
        factories, until the garbage collector runs (the legs themselves and
        the session are not held);
      - the class C{HostnameEndpoint.connect} makes on every call (its
        resolution receiver): like every class, it is in a cycle with its own
        dict, and its methods hold the addresses resolved and the Deferred
        that fired with them.
    """
    tls = os.path.join("twisted", "protocols", "tls.py")
    inside = {id(o) for o in garbage}
    held: set[int] = set()
    stack = [
        o for o in garbage
        if isinstance(o, FrameType) and o.f_code.co_filename.endswith(tls)
        or isinstance(o, type) and o.__qualname__ == "HostnameEndpoint.connect.<locals>.EndpointReceiver"
    ]
    while stack:
        each = stack.pop()
        if id(each) not in held:
            held.add(id(each))
            stack.extend(r for r in gc.get_referents(each) if id(r) in inside and id(r) not in held)
    return held


class RealtimeCycleTests(GatewayTestCase):
    """Finished Realtime sessions leave nothing of agw, Twisted or Autobahn for the garbage collector."""

    maxDiff = None

    def finished(self) -> bool:
        """Whether every session's two legs are gone."""
        return all(not relay.sessions and not len(relay.connections) for relay in self.gateway.relays)

    @inlineCallbacks
    def garbage_of(self, sessions: Callable[[int], Generator[Deferred[Any], Any, None]]) -> Any:
        """
        Run C{sessions(count)} (an inlineCallbacks body that opens and ends
        that many sessions) for a warm-up, then again with the collector
        saving what it frees; the types of ours found in that garbage, with
        how many of each.
        """
        yield inlineCallbacks(sessions)(WARM_UP)  # pools, caches and first-use objects made once
        yield wait_until(self.finished)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            yield inlineCallbacks(sessions)(SESSIONS)
            yield wait_until(self.finished)
            gc.collect()
            excused = held_by_twisted(gc.garbage)
            left = [type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage if id(o) not in excused]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        return Counter(name for name in left if name.startswith(OURS) and not name.startswith("agw.testing"))

    def assertNoneLeftPerSession(self, found: Counter[str]) -> None:
        # A few objects made once per run may be left (a thread's Deferred); what each session left counts SESSIONS.
        left = {name: count for name, count in found.items() if count >= SESSIONS}
        self.assertEqual(left, {})

    @inlineCallbacks
    def test_client_closes(self) -> Any:
        def sessions(count: int) -> Any:
            def run() -> None:
                for _ in range(count):
                    close_normally(open_session(self.port))

            yield deferToThread(run)

        self.assertNoneLeftPerSession((yield self.garbage_of(sessions)))

    @inlineCallbacks
    def test_provider_closes(self) -> Any:
        def sessions(count: int) -> Any:
            opened = yield deferToThread(lambda: [open_session(self.port) for _ in range(count)])
            for session in self.fake.sessions[-count:]:
                session.close(1001, "session_expired")

            def ended() -> None:
                for sock in opened:
                    read_until(sock, b"session_expired")  # the provider's close frame, relayed
                    close_normally(sock)  # the client's reply; then agw ends TCP

            yield deferToThread(ended)

        self.assertNoneLeftPerSession((yield self.garbage_of(sessions)))

    @inlineCallbacks
    def test_client_drops_tcp(self) -> Any:
        closes = len(self.fake.closes)

        def sessions(count: int) -> Any:
            nonlocal closes
            opened = yield deferToThread(lambda: [open_session(self.port) for _ in range(count)])
            for sock in opened:
                sock.close()  # no close frame: the TCP connection just ends
            closes += count
            yield wait_until(lambda: len(self.fake.closes) == closes)

        self.assertNoneLeftPerSession((yield self.garbage_of(sessions)))

    @inlineCallbacks
    def test_client_leaves_a_response_in_flight(self) -> Any:
        """The upstream leg outlives the client's (it cancels the response and waits for its usage): then goes too."""
        self.fake.response_delay = 30.0  # until cancelled
        closes = len(self.fake.closes)

        def leave(sock: socket.socket) -> None:
            sock.sendall(client_frame(0x1, json.dumps({"type": "response.create"}).encode()))
            read_until(sock, b"response.created")
            sock.close()

        def sessions(count: int) -> Any:
            nonlocal closes
            yield deferToThread(lambda: [leave(open_session_started(self.port)) for _ in range(count)])
            closes += count
            yield wait_until(lambda: len(self.fake.closes) == closes)

        self.assertNoneLeftPerSession((yield self.garbage_of(sessions)))
        # Each response was cancelled by the upstream leg, and its usage read, before that leg closed.
        self.assertEqual(len(self.fake.ledger), WARM_UP + SESSIONS)


class TLSProviderCycleTests(RealtimeCycleTests):
    """
    The same, the provider over verified TLS and by name (a resolver and
    TLS on the upstream leg). What a frame of Twisted's TLS layer holds is
    not counted, nor what HostnameEndpoint's resolution receiver holds (see L{held_by_twisted}).
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        reactor.suggestThreadPoolSize(32)
        ca = TestCA.make()
        self.fake = FakeOpenAI()
        listening = yield self.fake.listen(reactor, tls=ca.server_options())
        self.addCleanup(listening.stopListening)
        root = self.mktemp() + ".pem"
        with open(root, "wb") as f:
            f.write(ca.ca_pem)
        config = yaml.safe_load(seed_config_text(listening.getHost().port))
        for route in config["binds"][0]["listeners"][0]["routes"]:
            route["policies"]["backendTLS"] = {"root": root, "hostname": ca.hostname}
            for backend in route.get("backends", []):
                backend["ai"]["hostOverride"] = f"localhost:{listening.getHost().port}"
        self.gateway, _, self.port = yield running_gateway(self, yaml.safe_dump(config))
