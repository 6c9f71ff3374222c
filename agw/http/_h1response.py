"""
A response of agw's upstream HTTP/1.1 client (L{agw.http._h1client}):
L{H1Response}, an C{IResponse} whose body is delivered as it is read,
gzip-decoded when the upstream compressed it.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from agw.routing import HeaderList


# A gzip body is decoded this much at a time: a small compressed chunk may inflate a thousandfold.
DECODED_PIECE = 256 * 1024
# A response head larger than this is refused (Twisted's client allows 16 KiB a line; agw a whole head).
MAX_HEAD = 64 * 1024


class HeadTooLarge(Exception):
    """The upstream's response head was larger than L{MAX_HEAD}."""


def http_version(text: str) -> tuple[bytes, int, int]:
    """httptools' version (C{"1.1"}) as Twisted's responses give it."""
    return (b"HTTP", 1, 1) if text == "1.1" else (b"HTTP", int(text[0]), int(text[2]))


@implementer(IResponse, IPushProducer)
class H1Response:
    """
    An upstream's response as agw's client reads it: its headers (a
    L{HeaderList}, with the C{connection}, C{transfer-encoding} and
    C{content-length} the upstream sent, as C{keep_connection_headers}
    gives Twisted's), and a body given to L{deliverBody}'s protocol as it
    arrives (held until then). It is that protocol's transport too: its
    pauses stop reading from the upstream, C{stopProducing} drops the
    connection.
    """

    __slots__ = (
        "code", "phrase", "version", "headers", "length", "request", "previousResponse",
        "_conn", "_protocol", "_held", "_ended", "_decoder", "_stopped",
    )

    def __init__(
        self, code: int, phrase: bytes, version: tuple[bytes, int, int], headers: HeaderList, length: int | object,
        conn: Any, gzipped: bool,
    ) -> None:
        self.code, self.phrase, self.version, self.headers = code, phrase, version, headers
        self.length = length
        self.request = None
        self.previousResponse = None
        self._conn: Any = conn  # the H1Connection it is read from, until it ends
        self._protocol: Protocol | None = None
        self._held: list[bytes] | None = None
        self._ended: Failure | None = None
        self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<H1Response {self.code} {self.phrase!r}>"

    def setPreviousResponse(self, response: IResponse) -> None:  # noqa: N802 (IResponse)
        self.previousResponse = response

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 (IResponse)
        """Give the body to C{protocol}: what came already, then the rest as it comes, then its end."""
        self._protocol = protocol
        protocol.makeConnection(self)
        held, self._held = self._held, None
        if held:  # what came before it was read goes on as one piece: one write to the client, not one per chunk
            protocol.dataReceived(held[0] if len(held) == 1 else b"".join(held))
        if self._ended is not None:
            self._protocol = None
            protocol.connectionLost(self._ended)

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        if self._conn is not None:
            self._conn.pause_reading()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._conn is not None:
            self._conn.resume_reading()

    def stopProducing(self) -> None:  # noqa: N802
        """The reader wants no more: the connection is dropped (never pooled), the body ends broken."""
        self._stopped = True
        if self._conn is not None:
            self._conn.abort()

    def data(self, data: bytes) -> None:
        """A piece of the body (as sent: decoded here)."""
        decoder = self._decoder
        if decoder is not None:
            data = decoder.decompress(data, DECODED_PIECE)
            while decoder.unconsumed_tail and not self._stopped:
                self._pass(data)
                data = decoder.decompress(decoder.unconsumed_tail, DECODED_PIECE)
        if data and not self._stopped:
            self._pass(data)

    def _pass(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        elif self._held is None:
            self._held = [data]
        else:
            self._held.append(data)

    def end(self, reason: Failure) -> None:
        """The body ended (C{ResponseDone}, C{PotentialDataLoss} or C{ResponseFailed}); the reader is told, once."""
        if self._ended is not None:
            return
        self._conn = None
        decoder = self._decoder
        if decoder is not None and reason.check(ResponseDone, PotentialDataLoss):
            try:
                rest = decoder.flush()
            except zlib.error:
                reason = Failure(ResponseFailed([Failure()]))
            else:
                if rest and not self._stopped:
                    self._pass(rest)
        self._ended = reason
        protocol, self._protocol = self._protocol, None  # it and its reader would hold each other until a GC
        if protocol is not None:
            protocol.connectionLost(reason)

    def whole(self) -> None:
        """
        The body is all in, before anyone reads it (it came with its head):
        its length is known, whatever its framing (a chunked answer can go
        on with a length, in one write).
        """
        if self.length is UNKNOWN_LENGTH and self._decoder is None and self._protocol is None:
            held = self._held
            self.length = 0 if not held else len(held[0]) if len(held) == 1 else sum(map(len, held))

    @property
    def ended(self) -> bool:
        return self._ended is not None
