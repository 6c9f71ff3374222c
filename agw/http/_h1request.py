"""
The request side of agw's upstream HTTP/1.1 client: a request's head as
bytes (L{request_head}), and its body written as its producer makes it
(L{RequestWriter}, what L{agw.http._h1client.H1Connection} builds on).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from agw.http._request_body import BytesBodyProducer
from agw.routing import HeaderList

# Methods a request may be sent twice with (RFC 9110 9.2.2), as Twisted retries them.
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class WrongBodyLength(Exception):
    """A request body producer wrote more or less than its C{length}."""


# Headers the client writes itself: the body's framing is its own to say.
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
# Methods whose empty body is still announced (as Twisted's client does: some servers want a length).
_EMPTY_LENGTH = frozenset((b"POST", b"PUT", b"PATCH"))


def _pairs(headers: Headers | HeaderList | Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    if isinstance(headers, HeaderList):
        return headers.pairs
    if isinstance(headers, Headers):
        return [(name, value) for name, values in headers.getAllRawHeaders() for value in values]
    return headers


def request_head(
    method: bytes, path: bytes, headers: Headers | HeaderList | Iterable[tuple[bytes, bytes]],
    body: IBodyProducer | None, authority: bytes,
) -> bytes:
    """
    The request line and headers of one request, ready to write: the
    caller's headers but its framing (C{body}'s length, else chunked),
    C{host} if it set none, C{accept-encoding: gzip} if it set none (the
    client decodes gzip itself). L{ValueError} if a header would break a
    line (a request smuggled in a value).
    """
    parts = [method, b" ", path, b" HTTP/1.1\r\n"]
    host = encoding = False
    written = 0
    for name, value in _pairs(headers):
        lower = name.lower()
        if lower in _FRAMING:
            continue
        if lower == b"host":
            host = True
        elif lower == b"accept-encoding":
            encoding = True
        parts += (name, b": ", value, b"\r\n")
        written += 1
    if not host:
        parts += (b"host: ", authority, b"\r\n")
    if not encoding:
        parts.append(b"accept-encoding: gzip\r\n")
    if body is None:
        if method in _EMPTY_LENGTH:
            parts.append(b"content-length: 0\r\n")
    elif body.length is UNKNOWN_LENGTH:
        parts.append(b"transfer-encoding: chunked\r\n")
    else:
        parts.append(b"content-length: %d\r\n" % body.length)
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One scan each instead of one per value: every line break must be one this function wrote
    # (the request line, each header, the blank line, and the host, encoding and length it added).
    lines = 2 + written + (not host) + (not encoding) + (body is not None or method in _EMPTY_LENGTH)
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError("a request header name or value holds a line break")
    return head


class PendingCall:
    """One request until its response head arrives: what a retry or a cancellation needs (C{origin}: an C{Origin})."""

    __slots__ = (
        "key", "origin", "tls", "head", "body", "head_only", "retryable", "deferred", "conn", "connecting",
        "cancelled",
    )

    def __init__(self, key: Any, origin: Any, tls: Any, head: bytes, body: Any, method: bytes) -> None:
        self.key, self.origin, self.tls, self.head, self.body = key, origin, tls, head, body
        self.head_only = method == b"HEAD"
        # Safe to send again on a new connection if a reused one turns out closed: no body, idempotent.
        self.retryable = body is None and method in _IDEMPOTENT
        self.conn: Any = None  # the H1Connection it went on
        self.connecting: Deferred[Any] | None = None
        self.cancelled = False
        self.deferred: Deferred[IResponse] = Deferred(self.cancel)

    def cancel(self, _: Deferred[IResponse]) -> None:
        """Cancelled before its head: the connection (or the connecting) is dropped; the Deferred fails with CancelledError."""
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.conn is not None:
            self.conn.abort()


@implementer(IConsumer, IPushProducer)
class RequestWriter(Protocol):
    """
    A connection's request body side: it is the consumer the body is
    written to (chunked when its length is unknown), and its producer as
    far as the transport knows, so a slow upstream pauses the body.
    """

    log = Logger()
    _call: PendingCall | None
    _sending = False
    _body_stopped = False
    # While a request is being started: its writes, sent as one (the head and a body written at once go in one packet).
    _cork: list[bytes] | None = None

    def _out(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
        else:
            self.transport.write(data)

    def start_body(self, call: PendingCall, body: IBodyProducer) -> None:
        """Have C{body} (of C{call}, whose head is written) produce into this connection."""
        if isinstance(body, BytesBodyProducer):  # in hand (a JSON body agw read): written with the head, not produced
            self._out(body.data)
            return
        self._body, self._sending = body, True
        self._chunked = body.length is UNKNOWN_LENGTH
        self._remaining = -1 if self._chunked else body.length
        self.transport.registerProducer(self, True)
        try:
            producing = body.startProducing(self)
        except Exception:
            producing = fail()
        producing.addCallbacks(self._body_sent, self._body_failed, callbackArgs=(call,), errbackArgs=(call,))

    def write(self, data: bytes) -> None:
        """A piece of the request body (C{IConsumer})."""
        if not self._sending:
            return  # stopped: an early answer, an abort
        if self._chunked:
            if data:
                self._out(b"%x\r\n%s\r\n" % (len(data), data))
            return
        self._remaining -= len(data)
        if self._remaining < 0:
            self._transmission_failed(Failure(WrongBodyLength("the body producer wrote more than its length")))
            return
        self._out(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802 (IConsumer)
        """The body producer is this connection's (registered with its transport) already."""

    def unregisterProducer(self) -> None:  # noqa: N802
        """See L{registerProducer}."""

    def pauseProducing(self) -> None:  # noqa: N802 (the transport's back pressure on the body)
        if self._sending:
            self._body.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._sending:
            self._body.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 (the transport is gone)
        self._stop_body(unregister=False)

    def _stop_body(self, unregister: bool) -> None:
        if not self._sending:
            return
        self._sending = False
        if unregister:
            self.transport.unregisterProducer()
        try:
            self._body.stopProducing()
        except Exception:
            self.log.failure("stopping a request body failed")

    def _body_sent(self, _: object, call: PendingCall) -> None:
        if call is not self._call or not self._sending:
            return
        self._sending = False
        self.transport.unregisterProducer()
        if self._chunked:
            self._out(b"0\r\n\r\n")
        elif self._remaining:
            self._transmission_failed(Failure(WrongBodyLength("the body producer wrote less than its length")))
            return
        self.body_sent()

    def _body_failed(self, failure: Failure, call: PendingCall) -> None:
        if call is not self._call or not self._sending:
            return
        self._sending = False
        self.transport.unregisterProducer()
        self._transmission_failed(failure)

    def _transmission_failed(self, failure: Failure) -> None:
        call = self._call
        if call is not None and not call.deferred.called:
            call.deferred.errback(RequestTransmissionFailed([failure]))
        self.abort()

    def body_sent(self) -> None:
        """The whole body is written."""

    def abort(self) -> None:
        """Drop the connection now."""
