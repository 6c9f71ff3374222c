"""
The chaos soak's load (bench/chaos_soak.py), on Twisted in the soak's
process: Realtime sessions one after another in each of N slots, each
playing a scenario (talk, cancel, leave mid-response, vanish or drop TCP
mid-response without a close, read slowly through a small receive window),
and HTTP chat completions at a rate (JSON and streamed; some read slowly,
some abandoned mid-body).
"""

from __future__ import annotations

import base64
import json
import random
import socket
from collections import Counter
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater

# 50 ms of 24 kHz PCM16 per append: traffic for a stalled provider to push back on.
APPEND = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 2400).decode()}).encode()
SCENARIOS = {"talk": 50, "cancel": 10, "leave": 10, "vanish": 8, "drop": 7, "slow": 15}
# "leave" (gone before the answer) is off: agw then cancels the upstream request, and what the
# provider billed for it is never metered (docs/http.md); --http-leave-early turns it on to measure that.
HTTP_MODES = {"read": 85, "slow": 8, "vanish": 7, "leave": 0}
STREAM_BYTES, STREAM_CHUNK = 256 * 1024, 4096  # what a slow reader asks the provider to push (test.stream)
STUCK_SECONDS = 30.0  # an open session that hears nothing this long is stuck (nothing in the soak pauses longer)


class Tally:
    """What the clients did and saw; C{sessions} maps each provider session id to its consumer."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sessions: dict[str, str] = {}
        self.errors: list[str] = []  # the load generator's own failures: the run does not count

    def failed(self, failure: Any, what: str) -> None:
        self.errors.append(f"{what}: {failure.getErrorMessage()}")

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n


class SoakSession(WebSocketClientProtocol):
    """One Realtime session playing its factory's scenario."""

    factory: SessionFactory

    def onOpen(self) -> None:
        self.heard = self.factory.reactor.seconds()
        self.left = self.factory.rng.randint(1, 4)  # responses to ask for
        self.streamed = 0  # bytes of test.stream messages read
        self.acted = False  # the scenario's one disruption happened
        self.done = 0  # response.done events seen
        self.last: str | None = None  # the last event's type

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        factory = self.factory
        self.heard = factory.reactor.seconds()
        if len(payload) > STREAM_CHUNK:  # a test.stream delta: counted, not parsed
            self.streamed += len(payload)
            return self._maybe_done()
        event = json.loads(payload)
        kind = self.last = event.get("type")
        if kind == "session.created":
            factory.tally.sessions[event["session"]["id"]] = factory.consumer
            factory.tally.add("sessions")
            self._begin()
        elif kind == "response.created" and factory.scenario == "cancel" and not self.acted:
            self.acted = True
            self._send({"type": "response.cancel", "response_id": event["response"]["id"]})
        elif kind == "response.output_text.delta" and factory.scenario in ("leave", "vanish", "drop") and not self.acted:
            self.acted = True
            factory.tally.add(f"sessions {factory.scenario} mid-response")
            if factory.scenario == "leave":
                self._close()
            elif factory.scenario == "vanish":
                self.transport.abortConnection()  # RST, no close frame
            else:
                self.transport.loseConnection()  # FIN, no close frame
        elif kind == "response.done":
            factory.tally.add("responses seen done")
            self.done += 1
            self._maybe_done() if factory.scenario == "slow" else self._next()
        elif kind == "error":
            factory.tally.add("error events")

    def _send(self, event: dict[str, Any] | bytes) -> None:
        if self.state == self.STATE_OPEN:  # the provider's side may have closed it meanwhile (1011, a kill)
            self.sendMessage(event if isinstance(event, bytes) else json.dumps(event).encode())

    def _close(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)

    def _begin(self) -> None:
        if self.factory.scenario != "slow":
            return self._next()
        # A slow reader: a small receive window, and nothing read for a while, while the provider pushes.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._send({"type": "test.stream", "bytes": STREAM_BYTES, "chunk": STREAM_CHUNK})
        self._ask()
        self.transport.pauseProducing()
        self.factory.reactor.callLater(self.factory.rng.uniform(1, 4), self.transport.resumeProducing)
        self.left = 0

    def _maybe_done(self) -> None:
        """A slow reader ends once it has read the whole stream and its response."""
        if self.streamed >= STREAM_BYTES and self.done:  # the fake streams messages until their bytes reach the ask
            self._close()

    def _ask(self) -> None:
        for _ in range(2):
            self._send(APPEND)
        modalities = ["audio"] if self.factory.rng.random() < 0.5 else ["text"]
        self._send({"type": "response.create", "response": {"output_modalities": modalities}})

    def _next(self) -> None:
        if self.left <= 0:
            self._close()
            return
        self.left -= 1
        self._ask()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        factory = self.factory
        factory.tally.add(f"closes {code}")
        if not factory.ended.called:
            factory.ended.callback(code)


class SessionFactory(WebSocketClientFactory):
    """One session's factory: its scenario, consumer and where it reports."""

    protocol = SoakSession

    def __init__(self, url: str, key: str, consumer: str, scenario: str, tally: Tally, rng: random.Random, reactor: Any) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {key}"})
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, openHandshakeTimeout=15, closeHandshakeTimeout=5)
        self.consumer, self.scenario, self.tally, self.rng, self.reactor = consumer, scenario, tally, rng, reactor
        self.ended: Deferred[int | None] = Deferred()
        self.client: SoakSession | None = None

    def buildProtocol(self, addr: Any) -> Any:
        self.client = super().buildProtocol(addr)
        return self.client


class HTTPCall(Protocol):
    """One chat completion over its own connection (C{Connection: close}): read whole, slowly, or abandoned mid-body."""

    def __init__(self, request: bytes, mode: str, tally: Tally, reactor: Any) -> None:
        self.request, self.mode, self.tally, self.reactor = request, mode, tally, reactor
        self.head = b""
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        if self.mode == "leave":  # gone before the answer: agw has sent the request on, or is sending it
            self.tally.add("http abandoned before the answer")
            self.reactor.callLater(0.002, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        first = not self.head
        self.head = (self.head + data)[:64]
        if not first:
            return
        if self.mode == "vanish":
            self.tally.add("http abandoned mid-body")
            self.transport.abortConnection()
        elif self.mode == "slow":
            self.transport.pauseProducing()
            self.reactor.callLater(2, self.transport.resumeProducing)

    def connectionLost(self, reason: Any) -> None:
        if self.mode not in ("vanish", "leave"):
            status = self.head.split(b" ", 2)[1].decode() if self.head.startswith(b"HTTP/1.1 ") else "none"
            self.tally.add(f"http {status}")
        self.ended.callback(None)


def chat_request(key: str, stream: bool) -> bytes:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(data), data)
    )


class Load:
    """
    C{sessions} Realtime slots and HTTP requests at C{http_rate} per second
    against agw on C{port} until C{until} (reactor time); C{keys} are the
    consumers' keys (C{(consumer, key)}; HTTP uses the first); C{scenarios}
    and C{http_modes} weigh what each session and request does.
    """

    def __init__(
        self, reactor: Any, port: int, sessions: int, http_rate: float, keys: list[tuple[str, str]], tally: Tally, seed: int,
        scenarios: dict[str, int] = SCENARIOS, http_modes: dict[str, int] = HTTP_MODES,
    ) -> None:
        self.reactor, self.port, self.sessions, self.http_rate, self.keys, self.tally = reactor, port, sessions, http_rate, keys, tally
        self.scenarios, self.http_modes = scenarios, http_modes
        self.rng = random.Random(seed)
        self.open: set[SessionFactory] = set()
        self.http: set[HTTPCall] = set()
        self.until = 0.0

    def run(self, until: float) -> Deferred[Any]:
        """Start; fires when every slot and request has ended after C{until}."""
        self.until = until
        watchdog = LoopingCall(self._watch)
        watchdog.clock = self.reactor
        watchdog.start(5, now=False).addErrback(self.tally.failed, "watchdog")
        requests = LoopingCall(self._request)
        requests.clock = self.reactor
        http_done = requests.start(1 / self.http_rate, now=False) if self.http_rate > 0 else Deferred()
        if self.http_rate <= 0:
            http_done.callback(None)
        self.reactor.callLater(max(0.0, until - self.reactor.seconds()), lambda: requests.running and requests.stop())
        slots = [self._slot(n) for n in range(self.sessions)]
        everything = DeferredList([*slots, http_done], fireOnOneErrback=True, consumeErrors=True)
        everything.addCallback(lambda _: DeferredList([call.ended for call in list(self.http)]))
        return everything.addBoth(lambda result: (watchdog.running and watchdog.stop(), result)[1])

    def choose(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), list(weights.values()))[0]

    @inlineCallbacks
    def _slot(self, n: int) -> Any:
        """Sessions one after another, staggered at the start, until C{until}."""
        yield deferLater(self.reactor, self.rng.uniform(0, 2), lambda: None)
        while self.reactor.seconds() < self.until:
            consumer, key = self.keys[n % len(self.keys)]
            factory = SessionFactory(
                f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime", key, consumer, self.choose(self.scenarios), self.tally,
                self.rng, self.reactor,
            )
            self.open.add(factory)
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port).connect(factory).addErrback(
                lambda failure, f=factory: f.ended.called or f.ended.callback(None)
            )
            yield factory.ended
            self.open.discard(factory)
            opened = factory.client is not None and hasattr(factory.client, "heard")
            if not opened:  # refused (the provider is down) or not connected: back off
                self.tally.add("handshakes failed")
            yield deferLater(self.reactor, self.rng.uniform(0.05, 0.3) if opened else 0.5, lambda: None)

    def _request(self) -> None:
        if len(self.http) >= 200:  # agw or the provider is down: don't pile up
            self.tally.add("http skipped (200 in flight)")
            return
        consumer, key = self.keys[0]
        mode = self.choose(self.http_modes)
        call = HTTPCall(chat_request(key, self.rng.random() < 0.5), mode, self.tally, self.reactor)
        self.http.add(call)
        call.ended.addBoth(lambda _: self.http.discard(call))
        connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), call).addErrback(
            lambda _: (self.tally.add("http connect failed"), call.ended.callback(None))
        )

    def _watch(self) -> None:
        """Close sessions that heard nothing for too long: each one is counted as stuck (a failure)."""
        now = self.reactor.seconds()
        for factory in list(self.open):
            client = factory.client
            if client is not None and getattr(client, "heard", now) < now - STUCK_SECONDS:
                self.tally.add("sessions stuck")
                self.tally.add(f"stuck: {factory.scenario} after {getattr(client, 'last', None)}, {client.streamed} streamed, {client.done} done")
                client.transport.abortConnection()

