"""
Answers on their way to the client: the head as the upstream sent it
(L{answer_head}: its own headers, its framing), the body written as it
arrives, with back pressure, watched for usage (L{agw.metering.Watcher})
without holding it whole, guarded when the route has response guards, and
cut off when it goes silent.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from agw.http._response_guard import AnswerGuard
from agw.metering import UsageChunkRemover, Watcher
from agw.routing import HeaderList, byte_pairs, client_gone, response_header_pairs


def answer_head(request: Request, response: IResponse, same_length: bool) -> bool:
    """
    The upstream's status and headers on the client's C{request}, framed
    as the upstream framed its body: its length (when the body goes on as
    it came: C{same_length}), none for 204 and 304 and a HEAD's own length,
    and no Content-Type where it sent none. C{True} when that body ends at
    the close (no length, not chunked) and C{request} can answer it so
    (L{agw.serve.GatewayRequest}): it then ends the same way.
    """
    request.setResponseCode(response.code, response.phrase)
    provided = byte_pairs(response.headers)
    passed = response_header_pairs(provided)
    headers = request.responseHeaders
    if isinstance(headers, HeaderList):
        headers.pairs.extend(passed)
    else:
        for name, value in passed:
            headers.addRawHeader(name, value)
    request.defaultContentType = None  # twisted.web's text/html would be a claim the upstream did not make
    if request.method == b"HEAD":
        # The length of the body a GET would have had, if the upstream said.
        for name, value in provided:
            if name == b"content-length":
                request.setHeader(b"content-length", value)
        return False
    if response.code in (204, 304) or response.code < 200:
        return False  # no body, no length (Twisted's client says 0)
    if isinstance(response.length, int):
        if same_length:
            request.setHeader(b"content-length", b"%d" % response.length)
        return False
    if any(name == b"transfer-encoding" for name, _ in provided) or not hasattr(request, "delimit_by_close"):
        return False
    request.delimit_by_close()
    return True


def when_client_leaves(request: Request, left: Callable[[], object]) -> None:
    """Call C{left} if C{request}'s client goes away before its answer is finished (agw's front door: no Deferred)."""
    on_lost = getattr(request, "when_lost", None)
    if on_lost is not None:
        on_lost(left)
    else:
        request.notifyFinish().addErrback(lambda _: left())


def kept_for_usage(pending: Deferred[IResponse], clock: IReactorTime, grace: float) -> None:
    """
    The client went away before the answer began: the upstream request is
    given C{grace} seconds more (the provider bills what it answers, which
    is then read for its usage), then cancelled.
    """
    # Not "if pending.called: return": a request waiting on a chained Deferred is called, and still cancellable.
    if grace <= 0:
        pending.cancel()
        return
    timer = clock.callLater(grace, pending.cancel)
    pending.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])


@implementer(IPushProducer)
class ClientPacing:
    """
    The producer a client's connection sees for an answer: its pauses
    pace the upstream body; its C{stopProducing} (the client left) does not
    stop it: L{BodyRelay.client_left} reads the rest for its usage.
    """

    def __init__(self, relay: BodyRelay) -> None:
        self._relay = relay

    def pauseProducing(self) -> None:
        self._relay.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._relay.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._relay.client_left()


class BodyRelay(Protocol):
    """
    Writes an upstream body to the client's request as it arrives (through
    C{remover}, then C{guard}, when there are). The
    upstream body is the producer of the client's connection, so a client
    that reads slowly slows the upstream down instead of growing memory.
    C{done} fires with the exception that ended the body (C{ResponseDone}
    when it is complete). A guard may end the client's answer early (a
    blocked stream): the body is then read to its end for its usage.
    """

    def __init__(
        self, request: Request, watcher: Watcher | None, first_byte: Callable[[], None],
        remover: UsageChunkRemover | None = None, clock: IReactorTime | None = None, idle_timeout: float = 0.0,
        guard: AnswerGuard | None = None, usage_grace: float = 0.0,
    ) -> None:
        self._request = request
        self._watcher = watcher
        self._remover = remover
        self._guard = guard
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        # Set when the body went silent for longer than the idle timeout.
        self.timed_out = False
        self._first_byte: Callable[[], None] | None = first_byte
        self.done: Deferred[BaseException] = Deferred()
        # What ended the body, once it has ended (what done fires with).
        self.reason: BaseException | None = None
        # The client left: the rest is read for its usage, for this long at most.
        self._usage_grace = usage_grace
        self._grace: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # An answer that is whole already (agw's client read it with its head) cannot go silent,
        # nor be paced: no timer, no producer.
        ended = getattr(self.transport, "ended", False)
        if client_gone(self._request):
            self.client_left()  # before the answer began: it is read for its usage only
        elif not ended:
            self._request.registerProducer(ClientPacing(self), True)
        if self._clock is not None and self._idle_timeout > 0 and not ended:
            self._idle = self._clock.callLater(self._idle_timeout, self._went_silent)

    def client_left(self) -> None:
        """
        The client went away mid-answer: the provider bills the answer all
        the same, so it is read on (nothing sent) for its usage, up to the
        grace; then it is cut off (and its usage, if none came, is lost).
        """
        if self._grace is not None:
            return
        self.transport.resumeProducing()  # the client may have paused it
        if self._clock is None or self._usage_grace <= 0:
            self.transport.stopProducing()
            return
        self._grace = self._clock.callLater(self._usage_grace, self.transport.stopProducing)

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
        if self._guard is not None:
            data = self._guard.feed(data)
        self._write(data)
        if self._guard is not None and self._guard.ended:
            self._client_done()

    def _client_done(self) -> None:
        """
        The client's answer is complete though the upstream body is not:
        finish it, and stop pacing the upstream by a client that no longer
        reads (or that leaves): the rest is read for its usage only.
        """
        request = self._request
        if request.producer is not None and request.channel is not None:
            request.unregisterProducer()
            self.transport.resumeProducing()  # the client may have paused it
        if not request.finished and not client_gone(request):
            request.finish()

    def _write(self, data: bytes) -> None:
        if data and not self._request.finished and not client_gone(self._request):
            self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        # The client may already be gone (then twisted.web dropped the channel).
        if self._request.producer is not None and self._request.channel is not None:
            self._request.unregisterProducer()
        if self._watcher is not None:
            self._watcher.finish()
        tail = self._remover.finish() if self._remover is not None else b""
        if self._guard is not None:
            tail = self._guard.feed(tail)
            last = self._guard.finish(isinstance(reason.value, ResponseDone))
            if isinstance(last, Deferred):  # a guard calls out (a webhook): the answer ends when it has answered
                last.addCallback(lambda data: self._ended(tail + data, reason.value))
                return
            tail += last
        self._ended(tail, reason.value)

    def _ended(self, tail: bytes, reason: BaseException) -> None:
        self._write(tail)
        self.reason = reason
        # A Failure passed to callback() would become an errback.
        self.done.callback(reason)
