"""
The client-facing leg of the Realtime relay: an Autobahn server protocol
that opens the upstream leg during the client's handshake, so upstream
refusals reach the client as HTTP statuses instead of silent closes.
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from agw._internals import offer_only, upgrade_done, use_compression
from agw.decisions import KeyRefused, agw_event_id
from agw.metering import (
    CLIENT_TO_UPSTREAM,
    RealtimeSession,
    client_event_id,
    client_event_types,
    decode_event,
    sole_event_type,
)
from agw.realtime._deflate import LeanDeflate, deflate_setting, usable_offers
from agw.realtime._frames import BINARY, Frame
from agw.realtime._guarding import CheckedEvent, SessionGuard
from agw.realtime._leg import RelayLeg
from agw.realtime._limit_events import limit_error_event
from agw.realtime._options import RelayOptions, SessionSlots
from agw.realtime._ordered import OrderedDelivery
from agw.realtime._refusal import UpstreamRefused
from agw.realtime._upstream import UpstreamProtocol
from agw.routing import ConnectionTracker, error_body


class SessionHost(Protocol):
    """What a server leg needs of its relay (L{agw.realtime.RealtimeRelay})."""

    options: RelayOptions
    slots: SessionSlots
    connections: ConnectionTracker
    log: Logger

    def new_session(self, request: ConnectionRequest, peer: IAddress | None = None, query: str = "") -> RealtimeSession: ...

    def new_guard(self, session: RealtimeSession, request: ConnectionRequest) -> SessionGuard | None: ...

    def handshake_refused(self, status: int) -> None: ...

    def open_upstream(
        self, request_uri: str, request: ConnectionRequest, session: RealtimeSession, request_peer: Any = None,
    ) -> Deferred[UpstreamProtocol]: ...

    def recheck(self, session: RealtimeSession) -> Deferred[None]: ...

    def opened(self, leg: RealtimeServerProtocol) -> None: ...

    def closed(self, leg: RealtimeServerProtocol) -> None: ...

REALTIME_SUBPROTOCOL = "realtime"
_REASONS = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}
RESPONSE_CREATE = "response.create"


def with_event_id(payload: bytes) -> tuple[bytes, str | None]:
    """A client event without C{event_id}, given one of agw's (the event as it was if it is not a JSON object)."""
    event = decode_event(payload)
    if event is None:
        return payload, None
    event_id = event["event_id"] = agw_event_id()
    return json.dumps(event, separators=(",", ":")).encode(), event_id


class HandshakeAnswer(Exception):
    """An HTTP answer to a handshake we will not complete."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(status, reason)
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    @classmethod
    def refused(cls, refused: KeyRefused) -> HandshakeAnswer:
        """The answer to a key, model or budget refusal."""
        return cls.error(refused.status, _REASONS[refused.status], refused.message, refused.code, error_type=refused.error_type)

    @classmethod
    def error(
        cls, status: int, reason: str, message: str, code: str, headers: list[tuple[str, str]] | None = None,
        error_type: str = "gateway_error",
    ) -> HandshakeAnswer:
        """An answer with OpenAI's error shape."""
        body = error_body(message, error_type, code)
        return cls(status, reason, [("Content-Type", "application/json"), *(headers or [])], body)


def answer_for(failure: Failure) -> HandshakeAnswer:
    """The client's answer when the upstream leg could not be opened."""
    error = failure.value
    if isinstance(error, KeyRefused):  # another process spent the budget (see RealtimeRelay.recheck)
        return HandshakeAnswer.refused(error)
    if isinstance(error, UpstreamRefused):
        # Pass the provider's answer through, minus framing we recompute.
        headers = [(k, v) for k, v in error.headers if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        return HandshakeAnswer(error.status, error.reason or "Refused", headers, error.body)
    if isinstance(error, (TimeoutError, ConnectTimeout, CancelledError)):
        return HandshakeAnswer.error(504, "Gateway Timeout", "upstream did not answer the handshake in time", "upstream_timeout")
    if isinstance(error, ConnectError):
        return HandshakeAnswer.error(502, "Bad Gateway", "upstream unreachable", "upstream_unreachable")
    return HandshakeAnswer.error(502, "Bad Gateway", "upstream closed the connection during the handshake", "upstream_closed")


def _asks_response(payload: bytes) -> bool:
    """Whether a client event is (or may be, to the provider) a response.create."""
    if isinstance(payload, CheckedEvent):
        return payload.kind == RESPONSE_CREATE
    return RESPONSE_CREATE in client_event_types(payload)


class RealtimeServerProtocol(RelayLeg, WebSocketServerProtocol):
    """The server half of the relay; its partner is an L{UpstreamProtocol}."""

    factory: RealtimeServerFactory

    def __init__(self) -> None:
        super().__init__()
        self._opening: Deferred[UpstreamProtocol] | None = None
        self._upstream: UpstreamProtocol | None = None
        self._answer: HandshakeAnswer | None = None
        self.session: RealtimeSession | None = None
        self.guard: SessionGuard | None = None
        self._ordered: OrderedDelivery | None = None  # with a guard: client events in order past its checks
        self._deflate: LeanDeflate | None = None

    def onConnect(self, request: ConnectionRequest) -> Deferred[str | None]:
        relay = self.factory.relay
        # Offers agw declines (all of them with compression off) are left out before Autobahn parses them.
        offer_only(self, usable_offers(request.extensions, deflate_setting(relay.options.client_deflate)))
        try:
            session = relay.new_session(request, self.transport.getPeer(), urlsplit(self.http_request_uri).query)
        except KeyRefused as refused:
            self._answer = HandshakeAnswer.refused(refused)
            raise ConnectionDeny(refused.status, self._answer.reason) from None
        if not relay.slots.acquire(self):
            self._answer = HandshakeAnswer.error(
                503, "Service Unavailable", "too many Realtime sessions on this listener; try again later",
                "too_many_sessions", [("Retry-After", "1")],
            )
            raise ConnectionDeny(503, "Service Unavailable")
        self.session = session
        guard = self.guard = relay.new_guard(session, request)
        if guard is not None:
            self._ordered = OrderedDelivery(guard.check_client, self.relay_message)
        # Near the end of a budget the handshake waits for a fresh read of everyone's spend first.
        opening = self._opening = relay.recheck(session).addCallback(
            lambda _: relay.open_upstream(self.http_request_uri, request, session, self.transport.getPeer())
        )

        def opened(upstream: UpstreamProtocol) -> str | None:
            self._upstream = upstream
            upstream.guard_with(guard)
            return REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in request.protocols else None

        def refused(failure: Failure) -> None:
            self._answer = answer_for(failure)
            relay.log.info(
                "realtime upstream refused {path}: {status}", path=request.path, status=self._answer.status
            )
            raise ConnectionDeny(self._answer.status, self._answer.reason)

        return opening.addCallbacks(opened, refused)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        answer = self._answer
        if answer is None or answer.status != code:
            answer = HandshakeAnswer.error(code, reason, reason, "handshake_failed")
        self.factory.relay.handshake_refused(answer.status)
        if self.session is not None:
            self.session.handshake_refused(answer.status)
        head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        head += [f"{name}: {value}" for name, value in answer.headers]
        head += [f"Content-Length: {len(answer.body)}", "Connection: close", "", ""]
        self.sendData("\r\n".join(head).encode("iso-8859-1") + answer.body)

    def onOpen(self) -> None:
        upgrade_done(self)  # the HTTP request the upgrade came in need not last as long as the session
        deflate = deflate_setting(self.factory.relay.options.client_deflate)
        if deflate is not None:
            # Autobahn's extension object keeps zlib state for the whole session; agw's only while a message needs it.
            self._deflate = use_compression(self, lambda negotiated: LeanDeflate.negotiated(negotiated, deflate.level))
        upstream = self._upstream
        if upstream is None or upstream.state != upstream.STATE_OPEN:
            self.close(1011, "upstream went away")
            return
        upstream.link(self)
        if self.guard is not None:
            self.guard.attach(self.send_if_open, upstream.send_if_open)
        assert self.session is not None
        self.session.started()
        self.factory.relay.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._ordered is not None:
            self._ordered.submit(payload, isBinary)  # through the guard, in order
        else:
            self.relay_message(payload, isBinary)

    def relay_message(self, payload: bytes, isBinary: bool) -> None:
        """A client message on its way to the provider (governed if it asks for a response)."""
        session = self.session
        # An event that names its type twice is governed as the response.create it may be to the provider
        # (one the guard encoded names its type once).
        if isBinary or session is None or not _asks_response(payload):
            self.message_relayed(len(payload), self.forward(payload, isBinary))
            return
        event_id = client_event_id(payload)
        refused = session.refusal()
        if refused is not None:
            # Not forwarded: the client learns why in-protocol, and the session goes on.
            self.send_if_open(limit_error_event(refused, event_id))
            session.refused()
            return
        if event_id is None:
            # Named by agw, so that the provider's error for it (it may refuse it) says which request never runs.
            payload, event_id = with_event_id(payload)
        forwarded = self.forward(payload, isBinary)
        self.message_relayed(len(payload), forwarded)
        if forwarded:
            session.response_requested(event_id)
        else:
            session.request_dropped()

    def wants_whole(self, frame: Frame) -> bool:
        # Governance reads response.create; a text event whose head does not say its type, or that may
        # name a type again (a provider may act on either), is read whole too.
        if self._ordered is not None and self._ordered.holding:
            return True  # behind a check under way: everything waits, in order
        if frame.opcode == BINARY or self.session is None:
            return False
        kind = sole_event_type(frame.scratch_payload())
        return kind is None or kind == RESPONSE_CREATE or (self.guard is not None and self.guard.reads_client_type(kind))

    direction = CLIENT_TO_UPSTREAM

    def accounts(self) -> RealtimeSession | None:
        return self.session

    def connectionLost(self, reason: Any) -> None:
        self.factory.relay.slots.release(self)
        super().connectionLost(reason)
        if self._deflate is not None:
            self._deflate.release()  # now, not when the garbage collector reaches this session

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.relay.closed(self)
        session = self.session
        if self._opening is not None and not self._opening.called:
            self._opening.cancel()  # the client left during the handshake
            return
        upstream = self.partner
        if upstream is not None and session is not None and session.awaiting_usage and self.factory.relay.options.cancel_grace > 0:
            # The provider bills a response the client will never see: ask
            # it to stop, and keep listening for that response's usage.
            partner_code, partner_reason = self.code_for_partner(wasClean, code, reason)
            self.unlink()
            assert isinstance(upstream, UpstreamProtocol)
            upstream.drain(partner_code, partner_reason, self.factory.relay.options.cancel_grace, code)
            return  # the upstream leg ends the session when it is done
        if upstream is None and self._upstream is not None:
            self._upstream.close(1011, "client went away")
        self.relay_closed(wasClean, code, reason)
        if session is not None:
            session.ended(code, reason)  # Autobahn reports an unclean end as 1006


class RealtimeServerFactory(WebSocketServerFactory):
    """Builds server legs for one relay."""

    protocol = RealtimeServerProtocol

    def __init__(self, relay: SessionHost, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.relay = relay
        self.tracker = relay.connections
        self.write_buffer_size = relay.options.write_buffer_size
        self.max_fragments = relay.options.max_fragments
        self.pass_through = relay.options.pass_through
