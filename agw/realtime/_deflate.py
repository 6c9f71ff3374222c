"""
permessage-deflate (RFC 7692) on the client leg: which of a client's offers
agw can take (L{usable_offers}), what it answers for each setting of
C{RelayOptions.client_deflate} (L{Deflate}), and L{LeanDeflate}, the
extension itself, holding zlib state only while a message needs it.

Why it matters: a zlib compressor at Autobahn's defaults (32 KiB window,
memLevel 8) allocates 256 KiB and a decompressor 39 KiB; Autobahn keeps both
for the life of the session once used, and its sessions are freed by the
cyclic garbage collector, so after churn many dead sessions' zlib buffers
wait for a full collection. Measured in bench/deflate_memory.py and
docs/performance.md.
"""

from __future__ import annotations

import zlib
from types import MappingProxyType
from typing import Any

from attrs import frozen
from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import PerMessageCompress, PerMessageDeflateOffer, PerMessageDeflateOfferAccept

EXTENSION = "permessage-deflate"
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_WINDOWS = ("server_max_window_bits", "client_max_window_bits")
# A client's extension offers as Autobahn parses them: (name, {parameter: [value or True, ...]}).
Offers = list[tuple[str, dict[str, list[Any]]]]
_TRAILER = b"\x00\x00\xff\xff"  # what a sync flush ends with; RFC 7692 section 7.2.1 strips it


def window_bits(value: object) -> int | None:
    """A window size parameter's value as RFC 7692 writes it (8 to 15, no leading zero), else C{None}."""
    if not isinstance(value, str) or not value.isdigit() or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


@frozen
class Deflate:
    """
    How agw answers a client's permessage-deflate offer, and runs its side.

    C{window_bits}: the largest window agw compresses with and asks the
    client to compress with (C{None}: whatever the client asked, up to 15).
    C{no_context_takeover}: agw asks the client to start every message
    afresh, and does the same, so that no zlib state outlives a message.
    """

    window_bits: int | None
    mem_level: int
    level: int
    no_context_takeover: bool

    def accept(self, offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        """The answer to the first permessage-deflate offer among C{offers} (Autobahn's parsed offers)."""
        for offer in offers:
            if not isinstance(offer, PerMessageDeflateOffer):
                continue
            if not self.no_context_takeover:
                # As the client offered: its window and context rules, Autobahn's defaults for the rest.
                return PerMessageDeflateOfferAccept(offer, mem_level=self.mem_level)
            ours = self.window_bits or 15
            return PerMessageDeflateOfferAccept(
                offer,
                request_no_context_takeover=True,
                # The client may be asked for a window only if it offered client_max_window_bits.
                request_max_window_bits=ours if offer.accept_max_window_bits else 0,
                # agw's own side needs no negotiating: fresh context, a window no larger than the client allows.
                no_context_takeover=True,
                window_bits=min(ours, offer.request_max_window_bits or 15),
                mem_level=self.mem_level,
            )
        return None

    def usable(self, params: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
        """
        One offer's parameters as Autobahn's parser will take them, or
        C{None} when agw declines the offer: unknown or repeated parameters,
        values RFC 7692 does not allow, and C{server_max_window_bits=8}
        (zlib cannot compress within a 256-byte window; it uses 512).
        """
        usable: dict[str, list[Any]] = {}
        for name, values in params.items():
            if len(values) != 1 or name not in _FLAGS + _WINDOWS:
                return None
            value = values[0]
            if name in _FLAGS:
                if value is not True:
                    return None
                usable[name] = [True]
                continue
            bits = window_bits(value)
            if name == "server_max_window_bits":
                if bits is None or bits < 9:
                    return None
                usable[name] = [str(bits)]
            elif value is not True and bits is None:
                return None
            elif value is True or self.window_bits is None or bits is None or bits >= self.window_bits:
                # A value is a hint (the client will use no more): agw answers with its own, never larger.
                usable[name] = [True]
            # A smaller window than agw would ask for: agw asks none; it inflates any window.
        return usable


# The settings of RelayOptions.client_deflate ("off" has none). "small" is
# what websockets' servers default to (4 KiB windows, memLevel 5), with no
# context kept on either side; level 1: on Realtime's JSON events it
# compresses within 2% of level 6, in less time.
DEFLATE_SETTINGS = MappingProxyType({
    "small": Deflate(window_bits=12, mem_level=5, level=1, no_context_takeover=True),
    "accept": Deflate(window_bits=None, mem_level=8, level=zlib.Z_DEFAULT_COMPRESSION, no_context_takeover=False),
})


def deflate_setting(name: str) -> Deflate | None:
    """The L{Deflate} of a C{client_deflate} setting; C{None} for C{off}."""
    return DEFLATE_SETTINGS.get(name)


def usable_offers(extensions: Offers, setting: Deflate | None) -> Offers:
    """
    The client's offered extensions agw may accept, in its order: its
    permessage-deflate offers that L{Deflate.usable} takes (none with
    compression off). RFC 7692 section 7: an offer the server cannot accept
    is declined, the handshake goes on (Autobahn would answer 400 to an
    offer its parser rejects); agw supports no other extension.
    """
    if setting is None:
        return []
    usable: Offers = []
    for name, params in extensions:
        if name == EXTENSION:
            kept = setting.usable(params)
            if kept is not None:
                usable.append((name, kept))
    return usable


class LeanDeflate(PerMessageCompress):
    """
    The server side of permessage-deflate as Autobahn's C{PerMessageDeflate}
    runs it, except that zlib state exists only while it must: in a
    direction without context takeover a zlib object is made when a message
    starts and dropped when it ends (agw compresses a message in one call,
    so its compressor lives for that call), and L{release} drops both when
    the session closes, instead of when the garbage collector gets to it.
    """

    EXTENSION_NAME = EXTENSION

    def __init__(
        self, compress_bits: int, decompress_bits: int, keep_compressor: bool, keep_decompressor: bool,
        level: int, mem_level: int,
    ) -> None:
        self.compress_bits, self.decompress_bits = compress_bits, decompress_bits
        self.keep_compressor, self.keep_decompressor = keep_compressor, keep_decompressor
        self.level, self.mem_level = level, mem_level
        self._compressor: Any = None
        self._decompressor: Any = None

    @classmethod
    def negotiated(cls, negotiated: Any, level: int) -> LeanDeflate:
        """The same parameters as Autobahn's server-side C{PerMessageDeflate} made from agw's answer."""
        return cls(
            negotiated.server_max_window_bits, negotiated.client_max_window_bits,
            not negotiated.server_no_context_takeover, not negotiated.client_no_context_takeover,
            level, negotiated.mem_level,
        )

    @property
    def holding(self) -> bool:
        """Whether any zlib state is held now."""
        return self._compressor is not None or self._decompressor is not None

    def release(self) -> None:
        """Drop all zlib state (the session is over)."""
        self._compressor = self._decompressor = None

    def start_compress_message(self) -> None:
        if self._compressor is None:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -self.compress_bits, self.mem_level)

    def compress_message_data(self, data: bytes) -> bytes:
        return self._compressor.compress(data)  # type: ignore[no-any-return]

    def end_compress_message(self) -> bytes:
        data = self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if not self.keep_compressor:
            self._compressor = None
        return data[:-4]  # type: ignore[no-any-return]

    def start_decompress_message(self) -> None:
        if self._decompressor is None:
            self._decompressor = zlib.decompressobj(-self.decompress_bits)

    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        """Inflate C{data}; more than C{max_output_len} bytes out raises C{PayloadExceededError} (never truncates)."""
        try:
            if max_output_len is None:
                return self._decompressor.decompress(data)  # type: ignore[no-any-return]
            # zlib reads a limit of 0 as none: an exhausted budget lets 1 byte through, which is over it.
            out = self._decompressor.decompress(data, max(max_output_len, 1))
        except zlib.error as e:
            raise PayloadCorruptError(f"invalid permessage-deflate data: {e}") from e
        if self._decompressor.unconsumed_tail or len(out) > max_output_len:
            raise PayloadExceededError(f"WebSocket message inflates beyond {max_output_len} more octets")
        return out  # type: ignore[no-any-return]

    def end_decompress_message(self) -> None:
        try:
            self._decompressor.decompress(_TRAILER)
        except zlib.error as e:
            raise PayloadCorruptError(f"invalid permessage-deflate data: {e}") from e
        if not self.keep_decompressor:
            self._decompressor = None
