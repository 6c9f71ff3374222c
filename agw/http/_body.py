"""
Response bodies on their way to the client: written as they arrive, with
back pressure, watched for usage (L{agw.metering.Watcher}) without holding
them whole, and cut off when they go silent.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import Request

from agw.metering import UsageChunkRemover, Watcher
from agw.routing import client_gone


class BodyRelay(Protocol):
    """
    Writes an upstream body to the client's request as it arrives (through
    C{remover}, when there is one). The
    upstream body is the producer of the client's connection, so a client
    that reads slowly slows the upstream down instead of growing memory.
    C{done} fires with the exception that ended the body (C{ResponseDone}
    when it is complete).
    """

    def __init__(
        self, request: Request, watcher: Watcher | None, first_byte: Callable[[], None],
        remover: UsageChunkRemover | None = None, clock: IReactorTime | None = None, idle_timeout: float = 0.0,
    ) -> None:
        self._request = request
        self._watcher = watcher
        self._remover = remover
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        # Set when the body went silent for longer than the idle timeout.
        self.timed_out = False
        self._first_byte: Callable[[], None] | None = first_byte
        self.done: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)
        if self._clock is not None and self._idle_timeout > 0:
            self._idle = self._clock.callLater(self._idle_timeout, self._went_silent)

    def _went_silent(self) -> None:
        # A stream that stops sending would hold the client (and a pooled
        # connection) forever: cut it off; the client sees it incomplete.
        self.timed_out = True
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.reset(self._idle_timeout)
        if self._first_byte is not None:
            self._first_byte()
            self._first_byte = None
        if self._watcher is not None:
            self._watcher.feed(data)
        if self._remover is not None:
            data = self._remover.feed(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        if data and not self._request.finished and not client_gone(self._request):
            self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        # The client may already be gone (then twisted.web dropped the channel).
        if self._request.producer is not None and self._request.channel is not None:
            self._request.unregisterProducer()
        if self._watcher is not None:
            self._watcher.finish()
        if self._remover is not None:
            self._write(self._remover.finish())
        # A Failure passed to callback() would become an errback.
        self.done.callback(reason.value)
