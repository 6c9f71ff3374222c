"""
One request on agw's own front door (L{agw.serve.FrontDoor}): the part of
twisted.web's C{Request} API the forwarding core (L{agw.http.HTTPForwarder},
its body relay, refusals and guards) uses, so that one core serves both
this door and the twisted.web resource embedders mount. Headers are
L{HeaderList}s; the answer's head goes out with its first body bytes, in
one write.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from agw._internals import write_now
from agw.http import ArrivingBody
from agw.routing import HeaderList, error_body

_NO_BODY = (204, 304)
_PHRASES = {499: b"Client Closed Request"}


class HTTPDate:
    """The C{Date} header's value, formatted once a second (one per bind, shared by its connections)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second, self.value = -1, b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, formatdate(second, usegmt=True).encode("ascii")
        return self.value


@implementer(IPushProducer)
class _OnceStopped:
    """A response's producer as the client's transport sees it: stopped once, whoever asks first."""

    __slots__ = ("producer",)

    def __init__(self, producer: IPushProducer) -> None:
        self.producer: IPushProducer | None = producer

    def pauseProducing(self) -> None:  # noqa: N802
        if self.producer is not None:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.producer is not None:
            self.producer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()


class FrontRequest:
    """
    A request read by the front door C{door}: C{method}, C{uri} (routing
    sets it and C{path} to the normalised target), C{requestHeaders}, the
    body as it arrives (C{agw_body}). The answer: C{setResponseCode},
    C{setHeader}/C{responseHeaders}, C{write}, C{finish}; framed by its
    C{Content-Length} when set, else chunked (HTTP/1.1) or ended by the
    close (L{delimit_by_close}, and for an HTTP/1.0 client).
    """

    defaultContentType: bytes | None = None

    def __init__(
        self, door: Any, method: bytes, uri: bytes, headers: HeaderList, http11: bool, keep_alive: bool,
        body: ArrivingBody,
    ) -> None:
        self.channel: Any = door
        # The request-target as it came (routing sets uri and path to the normalised one).
        self.target = uri
        self.method, self.uri, self.path = method, uri, uri.partition(b"?")[0]
        self.requestHeaders = headers
        self.agw_body = body
        self.http11, self.keep_alive = http11, keep_alive
        self.code, self._phrase = 200, b"OK"
        self.responseHeaders = HeaderList()
        self.startedWriting = False
        self.finished = False
        self._disconnected = False
        self._chunked = False
        self._close_delimited = False
        self._finishing: list[Deferred[None]] = []
        self._lost: list[Callable[[], object]] = []
        self.producer: _OnceStopped | None = None
        # Served by the bind's twisted.web site instead (see WebHandoff).
        self.handed_off = False
        self.upgrade = False
        # A client that waits for "100 Continue" before it sends its body.
        self.expects_continue = not body.complete and b"100-continue" in (headers.get(b"expect") or b"").lower()

    @classmethod
    def from_head(cls, door: Any, parser: Any, url: bytes, headers: HeaderList) -> FrontRequest:
        """The request whose head C{parser} (an C{httptools.HttpRequestParser}) has just read for C{door}."""
        length = headers.get(b"content-length")
        body = ArrivingBody(
            int(length) if length is not None else (None if headers.get(b"transfer-encoding") else 0),
            lambda: door.pause("body"), lambda: door.resume("body"),
        )
        request = cls(door, parser.get_method(), url, headers, parser.get_http_version() == "1.1", parser.should_keep_alive(), body)
        request.upgrade = parser.should_upgrade()
        return request

    def answer_error(self, status: int, message: str, code: str, error_type: str) -> None:
        """Answer with an OpenAI-shaped error of agw's own."""
        data = error_body(message, error_type, code)
        self.setResponseCode(status)
        self.responseHeaders.pairs += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        self.write(data)
        self.finish()

    # What the core reads of the request.

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802
        return self.requestHeaders.get(name.lower())

    def header_text(self, name: str) -> str | None:
        """The first value of header C{name}, as text."""
        value = self.requestHeaders.get(name.lower().encode("latin-1"))
        return value.decode("latin-1") if value is not None else None

    def getClientAddress(self) -> Any:  # noqa: N802
        return self.channel.peer

    # The answer.

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:  # noqa: N802
        self.code = code
        self._phrase = message or RESPONSES.get(code) or _PHRASES.get(code, b"Unknown")

    def setHeader(self, name: bytes, value: bytes) -> None:  # noqa: N802
        self.responseHeaders.setRawHeaders(name, [value])

    def delimit_by_close(self) -> None:
        """Answer with a body that ends where the connection does (as the upstream's did), then close."""
        self.keep_alive = False
        self._close_delimited = True

    def write(self, data: bytes) -> None:
        if self.finished or self._disconnected:
            return
        if not self.startedWriting:
            write_now(self.channel.transport, self._head() + self._framed(data))
        elif data:
            self.channel.transport.write(self._framed(data))

    def _framed(self, data: bytes) -> bytes:
        if self.method == b"HEAD" or self.code in _NO_BODY:
            return b""
        if self._chunked and data:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _head(self) -> bytes:
        self.startedWriting = True
        pairs = self.responseHeaders.pairs
        names = {name for name, _ in pairs}
        no_body = self.code in _NO_BODY or self.code < 200
        if b"content-length" not in names and not no_body and self.method != b"HEAD":
            if self.http11 and not self._close_delimited:  # chunked, even before a close: a cut-off body must show
                self._chunked = True
                pairs.append((b"transfer-encoding", b"chunked"))
            else:
                self.keep_alive = False  # the body ends at the close
        if b"date" not in names:  # the gateway's own (the provider's are dropped), as nginx
            pairs.append((b"date", self.channel.date.now()))
        if b"server" not in names:
            pairs.append((b"server", b"agw"))
        if not self.keep_alive:
            pairs.append((b"connection", b"close"))
        elif not self.http11:
            pairs.append((b"connection", b"keep-alive"))
        lines = [b"HTTP/1.1 %d %s" % (self.code, self._phrase)]
        lines.extend(name + b": " + value for name, value in pairs)
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    def finish(self) -> None:
        if self.finished or self._disconnected:
            return
        if not self.startedWriting:
            no_length = self.code in _NO_BODY or self.method == b"HEAD"  # a HEAD's length is a GET's, if known
            if not no_length and not self.responseHeaders.hasHeader(b"content-length"):
                self.responseHeaders.pairs.append((b"content-length", b"0"))
            write_now(self.channel.transport, self._head())
        elif self._chunked:
            self.channel.transport.write(b"0\r\n\r\n")
        self.finished = True
        for waiting in self._finishing:
            waiting.callback(None)
        self._finishing, self._lost = [], []
        self.channel.answered(self)

    def notifyFinish(self) -> Deferred[None]:  # noqa: N802
        """Fires when the answer is finished; fails when the client left first."""
        waiting: Deferred[None] = Deferred()
        if self.finished:
            waiting.callback(None)
        elif self._disconnected:
            waiting.errback(Failure(ConnectionError("the client left")))
        else:
            self._finishing.append(waiting)
        return waiting

    def when_lost(self, left: Callable[[], object]) -> None:
        """Call C{left} if the client goes away before the answer is finished (L{notifyFinish} without a Deferred)."""
        if self._disconnected:
            left()
        elif not self.finished:
            self._lost.append(left)

    def loseConnection(self) -> None:  # noqa: N802
        """The answer broke off: the client must not take it as whole."""
        self.keep_alive = False
        self.channel.transport.loseConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:  # noqa: N802
        self.producer = _OnceStopped(producer)
        if self._disconnected:
            self.producer.stopProducing()
            return
        self.channel.transport.registerProducer(self.producer, True)

    def unregisterProducer(self) -> None:  # noqa: N802
        if self.producer is not None:
            self.producer.producer = None
            self.producer = None
            if not self._disconnected:
                self.channel.transport.unregisterProducer()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        """The client's connection is gone (C{client_gone} is then true)."""
        self._disconnected = True
        self.agw_body.broke()
        if self.producer is not None:
            self.producer.stopProducing()
        finishing, self._finishing = self._finishing, []
        for waiting in finishing:
            waiting.errback(reason)
        lost, self._lost = self._lost, []
        for left in lost:
            left()
