"""
Frame pass-through for a relay leg: once both legs are open (and neither
negotiated compression), data frames are forwarded as the bytes that
arrived. A client's frames keep the client's own mask (they are valid
client frames for the provider too); a provider's frames stay unmasked.
Only frame headers are parsed (L{FrameReader}: boundaries, size and
fragment limits). A message is taken whole, unmasked and handed to the
leg's C{onMessage} (the message path) only when it can matter: the leg
says which from the head of its first frame (L{PassThrough.wants_whole}),
and fragmented messages always are. Control frames go to Autobahn, which
answers pings and runs the close handshake as before.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from agw._internals import at_frame_boundary, feed_autobahn
from agw.realtime._frames import BINARY, CLOSE, CONTINUATION, Frame, FrameReader

_OPEN, _CLOSED = WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSED
_GROUND = WebSocketProtocol.SEND_STATE_GROUND


class PassThrough:
    """
    Mixin for a relay leg (before Autobahn's protocol in the bases). The
    relay sets C{pass_through} when it links two legs that can both use it;
    the leg switches at the next frame boundary.
    """

    pass_through = False
    _reader: FrameReader | None = None
    _parts: list[bytes] | None = None  # the message being taken whole
    _parts_binary = False
    _peer_closed = False  # its close frame came: nothing after it is read (RFC 6455 section 5.5.1)

    # Provided by the relay leg and Autobahn's protocol.
    partner: Any
    factory: Any
    state: int
    failedByMe: bool
    maxMessagePayloadSize: int
    onMessage: Any
    dropConnection: Any
    _fail_connection: Any

    def wants_whole(self, frame: Frame) -> bool:
        """Whether this single-frame message must be read whole and go through C{onMessage} (else it passes as it came)."""
        return True

    # The direction this leg relays in, and where it counts what it relays (the session; None: nowhere).
    direction = ""

    def accounts(self) -> Any:
        return None

    def message_relayed(self, size: int, forwarded: bool) -> None:
        """A message of C{size} payload bytes was forwarded to the partner (or dropped: C{forwarded} false)."""
        sink = self.accounts()
        if sink is not None:
            if forwarded:
                sink.relayed(self.direction, size)
            else:
                sink.dropped(self.direction)

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if not (self.pass_through and at_frame_boundary(self)):
                super().dataReceived(data)  # type: ignore[misc]
                return
            reader = self._reader = FrameReader(
                masked=bool(self.factory.isServer), max_message=self.maxMessagePayloadSize,
                max_fragments=getattr(self.factory, "max_fragments", 0),
            )
        if self.state == _CLOSED:
            return
        frames, error = reader.feed(data)
        if self.failedByMe:
            # agw failed this peer: only its close reply matters now (the rest of the offending message is skipped).
            for frame in frames:
                if frame.opcode == CLOSE:
                    feed_autobahn(self, frame.raw)
                    return
            return
        # Frames that go on as they came are written together, once per read (one write call, not one per event).
        passing: list[Frame] = []
        for frame in frames:
            if self.failedByMe or self.state == _CLOSED or self._peer_closed:
                break
            opcode = frame.opcode
            if opcode == CONTINUATION or opcode >= CLOSE or not frame.fin or self.wants_whole(frame):
                self._flush(passing)
                self._received(frame)
                continue
            partner = self.partner
            forwarded = partner is not None and partner.state == _OPEN
            if forwarded:
                passing.append(frame)
            self.message_relayed(frame.size, forwarded)
        self._flush(passing)
        if error is not None and not (self.failedByMe or self.state == _CLOSED):
            self._fail_connection(error.code, error.reason)
            if error.final:  # no close reply to wait for: end it once the close frame is out
                self.dropConnection(abort=False)

    def _flush(self, passing: list[Frame]) -> None:
        """Write the frames gathered in C{passing} to the partner as they came (and empty it)."""
        if not passing:
            return
        partner = self.partner
        if partner is not None and partner.state == _OPEN:
            if partner.send_state != _GROUND or partner.send_queue:
                # Autobahn is sending a frame there in pieces: let it frame these messages after it.
                for frame in passing:
                    partner.sendMessage(frame.payload(), frame.opcode == BINARY)
            else:
                partner.transport.writeSequence([frame.raw for frame in passing])
        passing.clear()

    def _received(self, frame: Frame) -> None:
        """A control frame, or a frame of a message read whole."""
        opcode = frame.opcode
        if opcode >= CLOSE:
            self._peer_closed = opcode == CLOSE
            feed_autobahn(self, frame.raw)  # whole control frame, at a frame boundary for Autobahn
            return
        if opcode != CONTINUATION:
            self._parts_binary = opcode == BINARY
            self._parts = []
        if self._parts is None:
            return  # a continuation of nothing: FrameReader lets none through
        self._parts.append(frame.payload())
        if frame.fin:
            payload, self._parts = b"".join(self._parts), None
            self.onMessage(payload, self._parts_binary)
