"""
A request body as it arrives on agw's own front door: the forwarder either
reads it whole (the JSON of completions, responses, embeddings) or streams
it upstream as it comes (L{ArrivingBody} is then the upstream request's
body producer), never spooled to a file. The front door feeds it; reading
from the client pauses while the upstream takes no more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from agw.http._request_body import Refused


class BodyBroken(Exception):
    """The client's connection ended before its request body did."""


@implementer(IBodyProducer)
class ArrivingBody:
    """
    One request's body, C{length} bytes (its C{Content-Length}; C{None}:
    chunked). C{pause} and C{resume} stop and start reading from the
    client: while nobody takes the body yet, at most C{buffer_limit} bytes
    are kept before reading pauses.
    """

    def __init__(
        self, length: int | None, pause: Callable[[], None], resume: Callable[[], None], buffer_limit: int = 256 * 1024,
    ) -> None:
        self.length: Any = length if length is not None else UNKNOWN_LENGTH
        self.received = 0
        self.complete = length == 0
        self._pause, self._resume, self._buffer_limit = pause, resume, buffer_limit
        self._chunks: list[bytes] = []
        # Past a few pieces, one growing buffer: a body sent in 1-byte chunks would otherwise cost a
        # list slot and an object (about 40 bytes) for each byte.
        self._bulk: bytearray | None = None
        self._buffered = 0
        self._paused = False
        self._consumer: IConsumer | None = None
        self._sent: Deferred[None] | None = None
        self._whole: Deferred[bytes] | None = None
        self._whole_limit = 0
        self._broken: BaseException | None = None
        # Stopped by its reader (the upstream request ended): what still arrives is dropped.
        self.stopped = False

    # The front door's side.

    def receive(self, data: bytes) -> None:
        """Bytes of the body, as they arrive."""
        self.received += len(data)
        if self.stopped:
            return
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._keep(data)
        self._buffered += len(data)
        if self._whole is not None:
            if self._buffered > self._whole_limit:
                self._fail_whole(Refused.too_large(self._whole_limit))
        elif self._buffered > self._buffer_limit and not self._paused:
            self._paused = True
            self._pause()

    def end(self) -> None:
        """The body is complete."""
        self.complete = True
        if self._sent is not None and not self.stopped:
            sent, self._sent = self._sent, None
            sent.callback(None)
        elif self._whole is not None:
            whole, self._whole = self._whole, None
            whole.callback(self._take())

    def broke(self) -> None:
        """The client left before the body was complete."""
        if self.complete:
            return
        self._broken = BodyBroken("the client left before its request body was complete")
        if self._sent is not None:
            sent, self._sent = self._sent, None
            sent.errback(Failure(self._broken))
        if self._whole is not None:
            self._fail_whole(self._broken)

    def take_buffered(self) -> bytes:
        """What arrived and nobody took yet; from now on, nobody here takes the body (another reader does)."""
        data = self._take()
        self.stopped = True
        self._unpause()
        return data

    # The forwarder's side.

    def whole(self, limit: int) -> Deferred[bytes]:
        """The whole body, when it has arrived: L{Refused} (413) past C{limit} bytes."""
        if self._buffered > limit:
            return fail(Refused.too_large(limit))
        if self.complete:
            return succeed(self._take())
        if self._broken is not None:
            return fail(self._broken)
        self._whole, self._whole_limit = Deferred(), limit
        self._unpause()
        return self._whole

    def take_whole(self, limit: int) -> bytes:
        """The whole body, complete already: L{Refused} (413) past C{limit} bytes (a chunked one had no length to refuse it by)."""
        assert self.complete, "the body is still arriving"
        if self._buffered > limit:
            raise Refused.too_large(limit)
        return self._take()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        if self._buffered:
            consumer.write(self._take())
        if self.complete:
            return succeed(None)
        if self._broken is not None:
            return fail(self._broken)
        self._consumer, self._sent = consumer, Deferred()
        self._unpause()
        return self._sent

    def pauseProducing(self) -> None:  # noqa: N802
        if not self._paused:
            self._paused = True
            self._pause()

    def resumeProducing(self) -> None:  # noqa: N802
        self._unpause()

    def stopProducing(self) -> None:  # noqa: N802
        """The upstream request is over: the rest of the body is dropped (the front door closes after the answer)."""
        self.stopped = True
        self._consumer, self._chunks, self._bulk, self._buffered = None, [], None, 0
        self._unpause()

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._resume()

    def _keep(self, data: bytes) -> None:
        if self._bulk is not None:
            self._bulk += data
            return
        self._chunks.append(data)
        if len(self._chunks) > 16:
            self._bulk, self._chunks = bytearray(b"".join(self._chunks)), []

    def _take(self) -> bytes:
        if self._bulk is not None:
            data = bytes(self._bulk)
        else:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks, self._bulk, self._buffered = [], None, 0
        return data

    def _fail_whole(self, error: BaseException) -> None:
        whole, self._whole = self._whole, None
        self.stopped = True
        self._chunks, self._bulk, self._buffered = [], None, 0
        if whole is not None:
            whole.errback(Failure(error))
