"""
One connection of agw's upstream HTTP/1.1 client (L{H1Connection}): a
request at a time written in one piece (its body, if any, streamed after
it), the response read with httptools' parser, and the connection given
back to its pool (L{agw.http._h1pool}) when both are done and the upstream
keeps it open.
"""

from __future__ import annotations

from typing import Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from agw._internals import write_now
from agw.http._h1request import PendingCall, RequestWriter
from agw.http._h1response import MAX_HEAD, H1Response, HeadTooLarge, http_version
from agw.routing import HeaderList


class _HeadEnd(Exception):
    """Stops the parser at the end of a HEAD's response head: httptools cannot be told that no body follows."""


class _Extra(Exception):
    """Bytes after a complete response, never asked for: the connection is not used again."""


class H1Connection(RequestWriter):
    """
    One upstream connection of an C{H1Pool} (C{pool}), for one origin and TLS
    settings (C{key}): one request at a time, its body written as
    L{RequestWriter} does, its response read by httptools' parser.
    """

    def __init__(self, pool: Any, key: Any) -> None:
        self.key = key
        self.reused = False
        self.idle_since = 0.0  # when it went back to its pool
        self._pool = pool
        self._call: PendingCall | None = None
        self.dead = False  # aborted or closing: never used again
        self._closed: Deferred[None] | None = None
        self._paused = False

    def connectionMade(self) -> None:  # noqa: N802
        # A request's head and body go in one write; what follows (a streamed body) must not wait for an ACK.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    # The request.

    def send(self, call: PendingCall) -> None:
        """Write C{call}'s request (its head at once, its body as it is produced) and read its response."""
        self._call = call
        call.conn = self
        self._parser = HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._phrase = b""
        self._fed = 0
        self._received = self._done = self._keep = self._interim = self._framed = self._body_stopped = False
        self._response: H1Response | None = None
        self._error: BaseException | None = None
        self._cork = [call.head]
        if call.body is not None:
            self.start_body(call, call.body)
        cork, self._cork = self._cork, None
        if not self.dead:
            write_now(self.transport, cork[0] if len(cork) == 1 else b"".join(cork))

    def body_sent(self) -> None:
        if self._done:
            self._release()

    # The response: httptools' callbacks, then what is done once a chunk is parsed.

    def on_status(self, status: bytes) -> None:
        self._phrase = status

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are added up once the head is whole (or, if it is not, by dataReceived): not per header.
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        if code < 200 and code != 101:
            self._interim = True  # 100 Continue and the like: read as a message without a body, then forgotten
            return
        headers = HeaderList()
        headers.pairs = self._headers
        length: int | object = UNKNOWN_LENGTH
        gzipped = chunked = False
        size = len(self._phrase)
        for name, value in headers.pairs:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-encoding":
                gzipped = value.strip().lower() == b"gzip"
        if size > MAX_HEAD:
            self._error = HeadTooLarge(f"the response head is larger than {MAX_HEAD} bytes")
            raise self._error
        self._framed = chunked or length is not UNKNOWN_LENGTH
        if chunked:
            length = UNKNOWN_LENGTH
        if gzipped:  # decoded here: its length is not the length it will have
            headers.pairs = [pair for pair in headers.pairs if pair[0] not in (b"content-encoding", b"content-length")]
            length = UNKNOWN_LENGTH
        head_only = self._call.head_only  # type: ignore[union-attr]
        if head_only or code in (204, 304):
            length = 0  # as Twisted's client says: no body follows
        self._response = H1Response(code, self._phrase, http_version(parser.get_http_version()), headers, length, self, gzipped)
        if head_only:
            self._done, self._keep = True, parser.should_keep_alive()
            self._error = _HeadEnd()
            raise self._error

    def on_body(self, data: bytes) -> None:
        if not self.dead:
            self._response.data(data)  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        if self._done:
            self._error = _Extra()
            raise self._error

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim, self._headers, self._phrase = False, [], b""
            return
        self._done, self._keep = True, self._parser.should_keep_alive()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.dead:
            return
        if self._call is None or self._done:  # bytes nobody asked for: this connection can't be trusted
            self._pool.lost(self)
            self.abort()
            return
        self._received = True
        announced = self._response is not None
        try:
            self._parser.feed_data(data)
        except HttpParserError as e:
            error = self._error if self._error is not None else e
            if isinstance(error, _HeadEnd):
                self._keep = self._keep and data.endswith(b"\r\n\r\n")  # anything after the head was not asked for
            elif isinstance(error, _Extra):
                self._keep = False
            else:
                self._broken(error)
                return
        except HttpParserUpgrade as e:  # 101 Switching Protocols: not what agw asked for
            self._broken(e)
            return
        response = self._response
        if response is None:
            self._fed += len(data)
            if self._fed > MAX_HEAD:
                self._broken(HeadTooLarge(f"the response head is larger than {MAX_HEAD} bytes"))
            return
        if not announced:
            if self._sending and response.code >= 400:
                # An early refusal (413, say): the rest of the body would go nowhere.
                self._body_stopped = True
                self._stop_body(unregister=True)
            deferred = self._call.deferred  # type: ignore[union-attr]
            if self._done:
                # All of it came with its head: it is whole and ended (the connection back in
                # the pool) before its reader has it, which then reads it to its end at once.
                response.whole()
                self._ended(response)
            deferred.callback(response)
            return
        if self._done:
            self._ended(response)

    def _ended(self, response: H1Response) -> None:
        """C{response} was read to its end: the connection goes back (once its request's body is sent), the reader is told."""
        if self.dead:
            return
        if not self._sending:
            self._release()
        response.end(Failure(ResponseDone()))  # the connection waits for the body to be sent, if it is not yet

    def _broken(self, error: BaseException) -> None:
        """The response could not be read: the connection goes, the request or its body fails."""
        if isinstance(error, HttpParserCallbackError) and error.__context__ is not None:
            error = error.__context__  # a reader's own failure, raised within the parser
        if not isinstance(error, (HttpParserError, HttpParserUpgrade, HeadTooLarge)):  # the reader's own failure
            self.log.failure("reading an upstream response failed", Failure(error))
        failed = Failure(ResponseFailed([Failure(error)]))
        call, response = self._call, self._response
        self.abort()
        if response is not None:
            response.end(failed)
        elif call is not None and not call.deferred.called:
            call.deferred.errback(failed)

    def _release(self) -> None:
        """Request sent and response read: back to the pool if the upstream keeps the connection, else closed."""
        self._call = self._response = None
        self._parser = None
        if self._paused:
            self.resume_reading()
        if self._keep and not self._body_stopped and not self.dead:
            self._pool.put(self)
        else:
            self.dead = True
            self.transport.loseConnection()

    # Pacing and ending.

    def pause_reading(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self._paused = False
        self.transport.resumeProducing()

    def abort(self) -> None:
        """Drop the connection now (never pooled again)."""
        if self.dead:
            return
        self.dead = True
        self._stop_body(unregister=True)
        self.transport.abortConnection()

    def close(self) -> Deferred[None]:
        """Close an idle connection; fires when it is closed."""
        self._closed = Deferred()
        self.dead = True
        self.transport.loseConnection()
        return self._closed

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: N802
        aborted, self.dead = self.dead, True
        call, self._call = self._call, None
        if call is None:
            self._pool.lost(self)
        else:
            self._stop_body(unregister=False)
            response = self._response
            if response is None:
                if not call.deferred.called:
                    if not self._received and self.reused and call.retryable:
                        self._pool.retry(call)  # the upstream closed a pooled connection as it was reused
                    else:
                        call.deferred.errback((ResponseFailed if self._received else ResponseNeverReceived)([reason]))
            elif not self._framed and not aborted:
                response.end(Failure(PotentialDataLoss()))  # a body that ends at the close: whole, as far as anyone knows
            else:
                response.end(Failure(ResponseFailed([reason])))
        if self._closed is not None:
            self._closed.callback(None)
