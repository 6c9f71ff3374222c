"""
The upstream leg of the Realtime relay: an Autobahn client to the provider
that reports usage through the mixin and reports handshake refusals (status,
headers and body) instead of swallowing them.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.internet.defer import Deferred

from agw._internals import handshake_bytes, use_reactor_timers
from agw.decisions import Denial
from agw.metering import UPSTREAM_TO_CLIENT, RealtimeSession, might_carry_usage, sole_event_type
from agw.realtime._frames import BINARY, Frame
from agw.realtime._guarding import SessionGuard
from agw.realtime._leg import RelayLeg
from agw.realtime._limit_events import limit_error_event
from agw.realtime._options import RelayOptions
from agw.realtime._ordered import OrderedDelivery
from agw.realtime._refusal import Incomplete, parse_refusal
from agw.realtime._usage_mixin import DELTA_HEAD, RealtimeUsageMixin
from agw.routing import BackendTarget, ConnectionTracker


# How far into a provider event its response_id is looked for (it comes before any delta).
BLOCKED_HEAD = 256

POLICY_VIOLATION = 1008  # RFC 6455: the session ends because a policy forbids what it would do next


class UpstreamClosed(Exception):
    """The upstream connection ended before the handshake completed."""


class UpstreamProtocol(RealtimeUsageMixin, RelayLeg, WebSocketClientProtocol):
    """
    The client half of the relay. Reading from the provider is paused from
    the handshake until L{link}: the client's leg opens in the same call
    chain (see L{agw.realtime._server}), so nothing arrives before it; a
    message that finds no open partner is dropped and counted.
    """

    factory: UpstreamFactory

    usage_sink: RealtimeSession | None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self._draining: tuple[int | None, str | None, int | None] | None = None
        self._drain_timer: Any = None
        self._cancelled: set[str] = set()  # response ids a drain has cancelled
        self.guard: SessionGuard | None = None
        self._ordered: OrderedDelivery | None = None

    def guard_with(self, guard: SessionGuard | None) -> None:
        """Relay the provider's events through C{guard} (in order past its checks)."""
        self.guard = guard
        if guard is not None:
            self._ordered = OrderedDelivery(guard.check_server, self.relay_message)

    def processHandshake(self) -> Any:
        try:
            refusal = parse_refusal(handshake_bytes(self))
        except Incomplete:
            return None  # the head, or a refusal's body, is still arriving
        if refusal is not None:
            self.factory.failed(refusal)
            self.dropConnection(abort=True)
            return None
        return super().processHandshake()

    def onConnect(self, response: ConnectionResponse) -> None:
        return None

    def onOpen(self) -> None:
        # Hold the provider's first events (session.created) until the
        # client's leg is open too.
        self.transport.pauseProducing()
        self.factory.succeeded(self)

    def server_response_refused(self, response_id: str | None, refusal: Denial) -> None:
        """
        The provider started a response on its own (server VAD) that
        governance forbids: stop it (its usage is still counted) and tell the
        client why. When nothing changes that before the budget's window ends
        (C{refusal.final}), the session ends too (1008): each turn the client
        speaks would start another, and a cancelled response is still billed
        for its input.
        """
        # Either leg may be closing (the client left, the provider's close is under way): then nothing is sent.
        cancel: dict[str, Any] = {"type": "response.cancel"}
        if response_id is not None:
            cancel["response_id"] = response_id
        self.send_if_open(json.dumps(cancel).encode())
        if refusal.final:
            self.session_refused(refusal)
        elif self.partner is not None:
            self.partner.send_if_open(limit_error_event(refusal))

    def session_refused(self, refusal: Denial) -> None:
        """
        The session ends (1008): the provider starts responses on its own,
        and the budget cannot pay for another. The client is told why first;
        its leg closes, then this one drains what is still in flight.
        """
        partner = self.partner
        if partner is not None:
            partner.send_if_open(limit_error_event(refusal))
            partner.close(POLICY_VIOLATION, f"{refusal.code}: server-started responses cannot be paid for")

    def link(self, other: RelayLeg) -> None:
        super().link(other)
        self.transport.resumeProducing()

    def wants_whole(self, frame: Frame) -> bool:
        # Events that carry usage (or get agw's rate limits) are read whole; deltas and audio pass as they came.
        if self.partner is None or self._draining is not None:
            return True
        guard = self.guard
        if guard is not None and self._guard_reads(guard, frame):
            return True
        if frame.opcode == BINARY:
            return False
        sink = self.usage_sink
        if sink is not None and sink.awaiting_first_delta and b'delta"' in frame.raw[frame.start:frame.start + DELTA_HEAD]:
            sink.first_delta()
        return might_carry_usage(frame.raw, frame.start)

    def _guard_reads(self, guard: SessionGuard, frame: Frame) -> bool:
        """Whether the guard must read this frame's message (text it guards, or anything while a check is under way)."""
        assert self._ordered is not None
        if self._ordered.holding:
            return True
        if frame.opcode == BINARY:
            return False
        if guard.blocked and guard.blocks_head(frame.raw[frame.start:frame.start + BLOCKED_HEAD]):
            return True
        return guard.reads_server_type(sole_event_type(frame.scratch_payload()))

    direction = UPSTREAM_TO_CLIENT

    def accounts(self) -> Any:
        return self.usage_sink

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        payload = self.inspect_server_event(payload, isBinary)
        if self._draining is not None:
            self._drain_step()
            return
        if self._ordered is not None:
            self._ordered.submit(payload, isBinary)  # through the guard, in order
        else:
            self.relay_message(payload, isBinary)

    def relay_message(self, payload: bytes, isBinary: bool) -> None:
        """A provider message on its way to the client (and the session's end, if governance ends it after this one)."""
        self.message_relayed(len(payload), self.forward(payload, isBinary))
        if self.ending is not None:
            ending, self.ending = self.ending, None
            self.session_refused(ending)

    def drain(self, code: int | None, reason: str | None, grace: float, client_code: int | None) -> None:
        """
        The client left with responses in flight or asked for: cancel each
        one upstream (by its id, so concurrent and out-of-band responses
        stop too; a response acknowledged later is cancelled when its
        C{response.created} arrives) and stay open up to C{grace} seconds
        for their C{response.done} (and usage), then close with C{code}.
        """
        self._draining = (code, reason, client_code)
        sink = self.usage_sink
        if sink is None or not sink.in_flight:
            # Not acknowledged yet, or the provider gave no id: the default
            # conversation's response is the one to stop. (This leg may be
            # closing already, the provider's close under way: nothing is
            # sent then, and its close ends the drain.)
            self.send_if_open(b'{"type":"response.cancel"}')
        self._drain_timer = self.factory.clock.callLater(grace, self._finish_drain)
        self._drain_step()

    def _drain_step(self) -> None:
        sink = self.usage_sink
        if sink is None or not sink.awaiting_usage:
            self._finish_drain()
            return
        for response_id in sink.in_flight:
            if response_id not in self._cancelled:
                self._cancelled.add(response_id)
                # Not sent once this leg is closing (the grace ran out, or the provider closed): its usage is still read.
                self.send_if_open(json.dumps({"type": "response.cancel", "response_id": response_id}).encode())

    def _stop_drain_timer(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()

    def _finish_drain(self) -> None:
        self._stop_drain_timer()
        if self._draining is not None:
            code, reason, _ = self._draining
            self.close(code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self._draining is not None:
            self._stop_drain_timer()
            if self.usage_sink is not None:
                self.usage_sink.ended(self._draining[2], self._draining[1])
            self._draining = None
        if not self.factory.opened.called:
            received = handshake_bytes(self)
            refusal = parse_refusal(received, complete=True) if received else None
            self.factory.failed(refusal or UpstreamClosed(reason or "connection closed during handshake"))
        self.relay_closed(wasClean, code, reason)


class UpstreamFactory(WebSocketClientFactory):
    """
    Opens one upstream leg; L{opened} fires with the protocol once the
    provider accepted the handshake, or fails with L{agw.realtime.UpstreamRefused},
    L{UpstreamClosed} or the connection error.
    """

    protocol = UpstreamProtocol
    noisy = False  # no "Starting factory"/"Stopping factory" pair per session

    tracker: ConnectionTracker | None = None
    clock: Any = None  # the reactor, for the drain timer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: Deferred[UpstreamProtocol] = Deferred()

    def succeeded(self, protocol: UpstreamProtocol) -> None:
        if not self.opened.called:
            self.opened.callback(protocol)
        else:  # cancelled while the handshake finished: nobody wants it
            protocol.dropConnection(abort=True)

    def failed(self, reason: Exception) -> None:
        if not self.opened.called:
            self.opened.errback(reason)


def connect_upstream(
    factory: UpstreamFactory, target: BackendTarget, reactor: Any, options: RelayOptions, tracker: ConnectionTracker,
) -> Deferred[UpstreamProtocol]:
    """
    Open C{factory}'s leg to C{target} with the relay's C{options}: fires
    with the open protocol, or fails (refusal, unreachable, timeout).
    Cancelling it abandons the attempt at any stage. Its connection is
    counted in C{tracker}.
    """
    factory.setProtocolOptions(
        maxMessagePayloadSize=options.max_message_size,
        maxFramePayloadSize=options.max_message_size,
        openHandshakeTimeout=options.handshake_timeout,
        closeHandshakeTimeout=options.close_timeout,
        autoPingInterval=options.ping_interval,
        autoPingTimeout=options.ping_timeout,
        perMessageCompressionOffers=[],
        failByDrop=False,
        # The provider's text is not validated as UTF-8 here: the client
        # validates what it receives (and closes with 1007, which the
        # relay passes on). What clients send is validated.
        utf8validateIncoming=False,
        echoCloseCodeReason=True,
    )
    use_reactor_timers(factory, reactor)
    factory.tracker = tracker
    factory.clock = reactor
    factory.write_buffer_size = options.write_buffer_size
    factory.max_fragments = options.max_fragments
    connecting = target.endpoint(reactor, options.handshake_timeout).connect(factory)
    # Emptied when the handshake's outcome is known: the attempt holds this factory (which holds opened, whose
    # canceller is cancel), then the protocol: a cycle that kept the session until the garbage collector ran.
    attempt = [connecting]

    def cancel(opened: Deferred[UpstreamProtocol]) -> None:
        # Timed out, or the client left: abandon the attempt at any stage.
        for pending in attempt:
            if not pending.called:
                pending.cancel()
            elif isinstance(pending.result, UpstreamProtocol):
                pending.result.transport.abortConnection()

    def forget(result: Any) -> Any:
        attempt.pop().addBoth(lambda _: None)  # its result was the protocol
        return result

    # The factory's guards (fire once; drop a protocol nobody wants) apply to this cancellable Deferred.
    factory.opened = opened = Deferred(cancel)
    connecting.addErrback(lambda failure: factory.failed(failure.value))
    opened.addTimeout(options.handshake_timeout, reactor)
    return opened.addBoth(forget)
