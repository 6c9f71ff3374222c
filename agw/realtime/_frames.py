"""
RFC 6455 frames as they arrive, for the pass-through: L{FrameReader} cuts
a byte stream into whole frames, checking only their headers (opcode, FIN,
RSV bits, length, masking) and the limits on message size and fragments.
Payloads are neither unmasked nor validated; a L{Frame} keeps the bytes it
came as, to be written on unchanged.
"""

from __future__ import annotations

import struct

from agw._internals import mask_payload, masked_copy

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL = frozenset({CLOSE, PING, PONG})
_MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask)
_U16, _U64 = struct.Struct("!H"), struct.Struct("!Q")
PROTOCOL_ERROR, TOO_BIG = 1002, 1009


class FrameError(Exception):
    """
    The peer broke the protocol or a limit: fail it with C{code}.
    C{final}: there is no close handshake to wait for (the offending frame
    was the peer's close frame, or its length cannot be trusted): drop the
    connection once the close frame is sent. Otherwise the reader goes on
    cutting frames, unchecked, so that the peer's close reply can be found
    behind the rest of the offending message.
    """

    def __init__(self, code: int, reason: str, final: bool = False) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.final = final


class Frame:
    """One whole frame: C{raw} is every byte of it as received; the payload starts at C{start}."""

    # A plain slotted class: one is made per relayed message, and attrs' checks would double that cost.
    __slots__ = ("fin", "opcode", "mask", "raw", "start")

    def __init__(self, fin: bool, opcode: int, mask: bytes | None, raw: bytes, start: int) -> None:
        self.fin, self.opcode, self.mask, self.raw, self.start = fin, opcode, mask, raw, start

    @property
    def size(self) -> int:
        return len(self.raw) - self.start

    def payload(self, limit: int | None = None) -> bytes:
        """The payload (its first C{limit} bytes), unmasked."""
        end = len(self.raw) if limit is None else min(len(self.raw), self.start + limit)
        data = self.raw[self.start:end]
        return mask_payload(self.mask, data) if self.mask is not None and data else data

    def scratch_payload(self) -> bytes | bytearray:
        """The whole payload unmasked, to read but not to forward (see L{agw._internals.masked_copy}: one copy fewer)."""
        if self.mask is None:
            return self.raw[self.start:]
        return masked_copy(self.mask, memoryview(self.raw)[self.start:])


class FrameReader:
    """
    Frames from a stream. C{masked}: whether the peer must mask (a client
    does, a server must not). C{max_message} (bytes, 0: none) and
    C{max_fragments} (0: none) bound a message, checked as each header
    arrives, before its payload is read.
    """

    def __init__(self, masked: bool, max_message: int = 0, max_fragments: int = 0) -> None:
        self._masked = masked
        self._max_message = max_message
        self._max_fragments = max_fragments
        # Unread bytes: _buffer from _pos, then _pending (joined only when a frame or header spans them).
        self._buffer = b""
        self._pos = 0
        self._pending: list[bytes] = []
        self._have = 0
        self._need: int | None = None  # bytes of the frame at the front, once its header is read
        self._head: tuple[bool, int, bytes | None, int] | None = None
        self._in_message = False
        self._message_size = 0
        self._fragments = 0
        self._failed = False

    def feed(self, data: bytes) -> tuple[list[Frame], FrameError | None]:
        """
        The frames C{data} completes, and the protocol error or broken limit
        that stopped reading, if one did (the frames before it still count).
        """
        if data:
            self._pending.append(data)
            self._have += len(data)
        frames: list[Frame] = []
        while True:
            try:
                if self._need is None and not self._read_header():
                    return frames, None
            except FrameError as error:
                return frames, error
            need, head = self._need, self._head
            assert need is not None and head is not None
            if self._failed and head[1] < CLOSE:
                # A data frame after a failure: its bytes are dropped as they come, never held.
                dropped = min(self._have, need)
                self._discard(dropped)
                if dropped < need:
                    self._need = need - dropped
                    return frames, None
                self._need = self._head = None
                continue
            if self._have < need:
                return frames, None
            if len(self._buffer) - self._pos < need:
                self._consolidate()
            buffer, pos = self._buffer, self._pos
            raw = buffer if pos == 0 and len(buffer) == need else buffer[pos:pos + need]
            self._pos += need
            self._have -= need
            fin, opcode, mask, start = head
            frames.append(Frame(fin, opcode, mask, raw, start))
            self._need = self._head = None

    def _discard(self, count: int) -> None:
        """Forget the next C{count} unread bytes (without joining them)."""
        self._have -= count
        available = len(self._buffer) - self._pos
        if count <= available:
            self._pos += count
            return
        count -= available
        self._buffer, self._pos = b"", 0
        while count:
            chunk = self._pending.pop(0)
            if len(chunk) <= count:
                count -= len(chunk)
            else:
                self._buffer, self._pos, count = chunk, count, 0

    def _consolidate(self) -> None:
        self._buffer = self._buffer[self._pos:] + b"".join(self._pending)
        self._pos = 0
        self._pending = []

    def _read_header(self) -> bool:
        # Read in place (no slice per header): this runs once per relayed message.
        available = len(self._buffer) - self._pos
        if available < _MAX_HEADER and self._pending:
            self._consolidate()  # the header may span reads
            available = len(self._buffer)
        if available < 2:
            return False
        buffer, pos = self._buffer, self._pos
        first, second = buffer[pos], buffer[pos + 1]
        length, start = second & 0x7F, 2
        if length == 126:
            if available < 4:
                return False
            length, start = _U16.unpack_from(buffer, pos + 2)[0], 4
        elif length == 127:
            if available < 10:
                return False
            length, start = _U64.unpack_from(buffer, pos + 2)[0], 10
            if length >> 63:
                raise FrameError(PROTOCOL_ERROR, "frame length has its most significant bit set", final=True)
        mask = None
        masked = bool(second & 0x80)
        if masked:
            if available < start + 4:
                return False
            mask, start = buffer[pos + start:pos + start + 4], start + 4
        fin, opcode = bool(first & 0x80), first & 0x0F
        self._need, self._head = start + length, (fin, opcode, mask, start)
        if not self._failed:
            try:
                self._check(fin, opcode, masked, first & 0x70, length)
            except FrameError:
                self._failed = True  # from here on frames are only cut, never checked (see FrameError)
                raise
        return True

    def _check(self, fin: bool, opcode: int, masked: bool, rsv: int, length: int) -> None:
        if rsv:
            raise FrameError(PROTOCOL_ERROR, "RSV bits set without a negotiated extension")
        if masked != self._masked:
            raise FrameError(PROTOCOL_ERROR, "unmasked client frame" if self._masked else "masked server frame")
        if opcode in _CONTROL:
            if not fin or length > 125:
                raise FrameError(PROTOCOL_ERROR, "fragmented or oversized control frame", final=opcode == CLOSE)
            return
        if opcode not in _DATA:
            raise FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode}")
        if opcode == CONTINUATION and not self._in_message:
            raise FrameError(PROTOCOL_ERROR, "continuation frame outside a message")
        if opcode != CONTINUATION and self._in_message:
            raise FrameError(PROTOCOL_ERROR, "new message before the last one ended")
        if opcode != CONTINUATION:
            self._message_size = self._fragments = 0
        self._message_size += length
        self._fragments += 1
        if self._max_message and self._message_size > self._max_message:
            raise FrameError(TOO_BIG, f"received WebSocket message size {self._message_size} exceeds payload limit of {self._max_message} octets")
        if self._max_fragments and self._fragments > self._max_fragments:
            raise FrameError(TOO_BIG, f"received WebSocket message has more than {self._max_fragments} fragments")
        self._in_message = not fin
