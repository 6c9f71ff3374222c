"""
What both halves of a Realtime relay share: the partner link, flow control
and close-code passing.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from agw._internals import LeanMessages, connection_ended, use_utf8_validator
from agw.realtime._passthrough import PassThrough
from agw.realtime._utf8 import DecoderUtf8Validator
from agw.routing import ConnectionTracker

# Codes RFC 6455 forbids in a close frame that describe a failure (no close
# frame, TLS failure): the partner gets 1011. 1005 means "a close frame
# without a code": the partner gets one too.
UNSENDABLE_CLOSE_CODES = frozenset({1006, 1015})
NO_STATUS = 1005
INTERNAL_ERROR = 1011


def close_reason_bytes(reason: str) -> bytes:
    """C{reason} as UTF-8, cut to the 123 bytes a close frame allows, on a character boundary."""
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def partner_close_code(code: int | None) -> int | None:
    """
    The code to close the partner with when a leg's peer closed cleanly with
    C{code}; C{None} is a close frame without a code, relayed as one.
    """
    if code is None or code == NO_STATUS:
        return None
    if code in UNSENDABLE_CLOSE_CODES:
        return INTERNAL_ERROR
    return code


class LegLogger(Logger):
    """
    The legs' logger. Autobahn logs raw handshakes, credentials included, at
    debug level through C{self.log}; nothing below info leaves a leg.

    Autobahn also logs at debug level on every frame, so this logger is
    cheap there: one shared instance (no per-access binding through
    C{Logger.__get__}) whose C{debug} does nothing.
    """

    def __get__(self, instance: object, owner: type | None = None) -> LegLogger:
        return self

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level < LogLevel.info:
            return
        super().emit(level, format, **kwargs)

    def debug(self, format: str | None = None, **kwargs: Any) -> None:
        """Never emitted."""

    def trace(self, *args: Any, **kwargs: Any) -> None:
        """txaio's level below debug: never emitted."""


@implementer(IPushProducer)
class PauseOnly:
    """
    The producer one leg registers on the other's transport: pause and
    resume pass through, but C{stopProducing} (called when the consumer's
    connection is lost) does not drop this leg: how it closes is the
    relay's decision (close code, draining an abandoned response).
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class RelayLeg(PassThrough, LeanMessages):
    """
    Mixin for one half of a relay (an Autobahn protocol): holds the partner,
    forwards frames as they came (L{PassThrough}) or whole messages, and
    closes the partner the way this leg closed.
    """

    log = LegLogger()
    partner: RelayLeg | None = None
    # Set when the relay itself closed this leg (shutdown, partner closed).
    closed_with: tuple[int | None, str | None] | None = None
    # The HTTP protocol the client's upgrade took the connection from (see DisplacingResource).
    displaced: Any = None

    # Provided by Autobahn's protocol classes (sendCloseFrame and
    # dropConnection too; not declared here, or the mixin would shadow them).
    closedByMe: bool
    localCloseCode: int | None
    sendCloseFrame: Any
    dropConnection: Any

    @property
    def tracker(self) -> ConnectionTracker | None:
        """Where this leg's factory counts its live connections."""
        return getattr(self.factory, "tracker", None)  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]
        use_utf8_validator(self, DecoderUtf8Validator())  # Autobahn's is slow on big messages
        size = getattr(self.factory, "write_buffer_size", None)
        if size is not None:
            # How much may wait for this peer before reading from the other
            # one pauses (see link); Twisted's 64 KiB is barely one audio
            # message, so flow control would pause and resume on every one.
            # Over TLS (an HTTPS listener, a backendTLS provider) the bytes
            # wait in the TCP transport under the TLS wrapper: its size counts.
            transport = self.transport
            while getattr(transport, "wrappedProtocol", None) is not None:
                transport = transport.transport
            transport.bufferSize = size
        if self.tracker is not None:
            self.tracker.add(self)

    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)  # type: ignore[misc]
        finally:
            connection_ended(self, reason)  # nothing of it left for the garbage collector
            if self.tracker is not None:
                self.tracker.discard(self)

    def link(self, other: RelayLeg) -> None:
        """
        Join two open legs, with back pressure both ways: each transport is
        the producer of the other, so a peer that does not read pauses
        reading from the opposite peer instead of filling our memory.
        """
        self.partner, other.partner = other, self
        # Frames pass through unless compression is on (its frames differ per leg) or the relay says no.
        enabled = all(getattr(leg.factory, "pass_through", True) for leg in (self, other))
        self.pass_through = other.pass_through = enabled
        for consumer, producer in ((self.transport, other.transport), (other.transport, self.transport)):
            # twisted.web registered its HTTPChannel as the producer of a
            # taken-over transport; it has no say any more.
            consumer.unregisterProducer()
            consumer.registerProducer(PauseOnly(producer), True)

    def code_for_partner(self, was_clean: bool, code: int | None, reason: str | None) -> tuple[int | None, str | None]:
        """
        How to close the partner after this leg closed: the same code and
        reason. When the relay closed this leg on purpose (shutdown) the
        partner gets that same code; when Autobahn failed this leg's peer
        (oversized message, protocol error, ping timeout) the partner gets
        1011: the failure was not its peer's; so does a peer that vanished.
        """
        if self.closed_with is not None:
            return self.closed_with
        if self.closedByMe and self.localCloseCode is not None:
            return INTERNAL_ERROR, "gateway failed the other leg"
        if not was_clean:
            return INTERNAL_ERROR, "peer went away"
        return partner_close_code(code), reason

    def unlink(self) -> RelayLeg | None:
        """
        Forget the partner (both ways) and end flow control between the two
        transports, resuming either side a full buffer had paused; return
        the partner.
        """
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner = None
            for leg in (self, partner):
                if not getattr(leg.transport, "disconnected", False):
                    leg.transport.unregisterProducer()
                    leg.transport.resumeProducing()
        return partner

    def relay_closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        """This leg closed: close the partner the same way (see L{code_for_partner})."""
        partner = self.unlink()
        if partner is not None:
            partner.close(*self.code_for_partner(was_clean, code, reason))

    def send_if_open(self, payload: bytes, is_binary: bool = False) -> bool:
        """
        Send a message on this leg if it is open; C{False} (nothing sent) if
        it is closing or closed. Every message agw itself sends on a leg goes
        through here: Autobahn raises C{Disconnected} on a leg that is not
        open, and raised from C{onClose} or C{dataReceived} that skips its
        connection bookkeeping (the rest of the read is lost, the session may
        end as 1006 instead of with the code that was relayed).
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            return False
        self.sendMessage(payload, is_binary)
        return True

    def forward(self, payload: bytes, is_binary: bool) -> bool:
        """
        Send a message to the partner if it is open; C{False} if there is
        none or it is closing (then the message is dropped: the session is
        ending).
        """
        partner = self.partner
        return partner is not None and partner.send_if_open(payload, is_binary)

    def close(self, code: int | None, reason: str | None) -> None:
        """
        Close with any code RFC 6455 allows (Autobahn's C{sendClose} only
        allows 1000 and 3000-4999, which would mangle 1001, 1011, 1013...);
        C{None} sends a close frame without a code.
        """
        if self.closed_with is None:
            self.closed_with = (code, reason)
        if self.state == WebSocketProtocol.STATE_OPEN:
            reason_bytes = close_reason_bytes(reason) if reason and code is not None else None
            self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)
        elif self.state != WebSocketProtocol.STATE_CLOSED and self.state != WebSocketProtocol.STATE_CLOSING:
            self.dropConnection(abort=True)
