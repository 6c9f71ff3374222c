"""
agw's own HTTP/1.1 front door for its listeners, parsing with httptools
(llhttp): the route is chosen when a request's head arrives, so a body over
the route's limit is refused from its C{Content-Length} before any upload,
a client waiting for C{100 Continue} is checked for its key first, and a
body streams upstream as it arrives. Requests to HTTP forwarders are served
here (pipelined ones in order); a Realtime session's handshake goes, with
the rest of the connection, to the relay's Autobahn protocol
(L{SessionTakeover}), anything else (other upgrades, the WebRTC endpoints)
to the bind's twisted.web site (L{WebHandoff}).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from agw.http import Refused
from agw.routing import HeaderList
from agw.serve._front_flow import ReadFlow
from agw.serve._front_request import FrontRequest, HTTPDate
from agw.serve._front_route import HandOff, Refusal, TakeOver, route_head, unreadable
from agw.serve._handoff import WebHandoff
from agw.serve._takeover import SessionTakeover
from agw.serve._site import GatewaySite, refusal_bytes
from agw.serve._uploads import UploadPace

# The most a request's head may hold (twisted.web's own limits: 16 KiB lines, 500 headers).
MAX_HEAD = 64 * 1024
MAX_HEADERS = 500
# Requests read ahead of their answers on one connection (each is an object; a 64 KiB read holds thousands).
MAX_PIPELINED = 32


class FrontDoor(Protocol):
    """One client connection of a bind, served on the bind's C{site} (its routes, limits, budgets)."""

    log = Logger()

    def __init__(self, site: GatewaySite, date: HTTPDate | None = None) -> None:
        self.site = site
        self.date = date if date is not None else HTTPDate()
        self._clock = site.upload_clock
        self.peer: Any = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._reading: FrontRequest | None = None  # whose head or body is being parsed
        self._current: FrontRequest | None = None  # being answered
        self._waiting: deque[FrontRequest] = deque()  # pipelined behind it
        self._handoff: WebHandoff | SessionTakeover | None = None
        self._raw: list[bytes] | None = None  # after an upgrade: what arrived before the handoff
        self._closed = self._overflowed = False
        self._parsing = False  # within feed_data
        self._starting = False  # within answered's loop over pipelined requests
        self._unserved: tuple[Any, FrontRequest] | None = None  # routed, waiting for the rest of this read
        self._pace: UploadPace | None = None
        self._held = 0
        self._idle: IDelayedCall | None = None
        self._active = 0.0
        self._head_started: float | None = None  # a request head is arriving, since then

    def connectionMade(self) -> None:  # noqa: N802
        self.peer, self._flow = self.transport.getPeer(), ReadFlow(self.transport)
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self._active = self._clock.seconds()
        if self.site.timeOut:
            self._idle = self._clock.callLater(self.site.timeOut, self._check_idle)

    # Reading.

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._raw is not None:  # after an upgrade: bytes, not HTTP
            if self._handoff is not None:
                self._handoff.dataReceived(data)
            else:
                self._raw.append(data)
            return
        if self._closed or self._parser is None:
            return
        self._active = self._clock.seconds()
        self._parsing = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._raw, self._parser = [data[upgrade.args[0]:]], None  # bytes from here on (see connectionLost)
            if self._handoff is not None:
                self._handoff.replay(self._raw)
            return
        except httptools.HttpParserError as error:
            if not self._closed:
                return self._refuse(unreadable(error))
            if not self._overflowed:
                return  # refused already, or the connection is twisted.web's now
        finally:
            self._parsing = False
        self._serve_unserved()  # a body that goes on arriving streams upstream from now
        reading, rate = self._reading, self.site.upload_min_rate
        if reading is not None and not reading.agw_body.complete and self._pace is None and rate > 0:
            self._pace = UploadPace(self._clock, self.site.upload_grace, rate, lambda: self._refuse(Refusal(
                408, f"the request body arrived slower than {rate} bytes a second", "request_timeout")))
            self._pace.received = reading.agw_body.received

    def on_message_begin(self) -> None:
        self._url, self._headers, self._head_size = b"", [], 0
        self._head_started = self._active

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise ValueError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD or len(self._headers) >= MAX_HEADERS:
            raise ValueError("request head too large")
        self._headers.append((name.lower(), value))  # whole: httptools joins a header cut over two reads

    def on_headers_complete(self) -> None:
        self._head_started = None
        request = FrontRequest.from_head(self, self._parser, self._url, HeaderList(self._headers))
        if self._handoff is not None:  # the connection is twisted.web's now: its head as it came
            self._handoff.head(request.method, self._url, request.requestHeaders, request.http11)
            self._reading = None
            return
        self._reading = request
        if self._current is None:
            self._start(request)
        elif len(self._waiting) < MAX_PIPELINED:
            self._waiting.append(request)
            self.pause("pipelined")
        else:  # the rest of this read goes unparsed and unanswered: those queued are answered, then the close
            self._waiting[-1].keep_alive, self._closed, self._reading, self._overflowed = False, True, None, True
            raise ValueError("too many pipelined requests")

    def on_body(self, data: bytes) -> None:
        request = self._reading
        if request is None:
            if self._handoff is not None:
                self._handoff.body(data)
            return
        if request.handed_off:
            self._handoff.body(data)  # type: ignore[union-attr]
            return
        limit = self.site.max_request_body
        body = request.agw_body
        if limit is not None and body.received + len(data) > limit:
            self._refuse(Refusal.of(Refused.too_large(limit)))
            raise ValueError("refused")
        if not self.site.body_budget.take(len(data)):
            self._refuse(Refusal(503, "the gateway holds too many request bodies; try again later", "too_many_uploads"))
            raise ValueError("refused")
        self._held += len(data)
        if self._pace is not None:
            self._pace.received = body.received + len(data)
        body.receive(data)

    def on_message_complete(self) -> None:
        request, self._reading = self._reading, None
        self._stop_pace()
        if request is not None and not request.handed_off:
            request.agw_body.end()
            self._serve_unserved()
        elif self._handoff is not None:
            self._handoff.end()

    # Answering.

    def _start(self, request: FrontRequest) -> None:
        """Route C{request} and begin its answer (its body may still be arriving)."""
        self._current = request
        decided = route_head(getattr(self.site.resource, "routes", None), request)
        if isinstance(decided, (HandOff, TakeOver)):
            return self._hand_off(request, decided)
        if isinstance(decided, Refusal):
            if decided.closes:
                return self._refuse(decided)
            self._count(request.method, decided.status)  # agw's own answer; the connection stays
            return request.answer_error(decided.status, decided.message, decided.code, decided.error_type or "invalid_request_error")
        if request.expects_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif not request.agw_body.complete and self._parsing:
            # Its body may be in this same read: served once it is (or once the read is), not waited for.
            self._unserved = (decided, request)
            return
        decided.render(request)  # type: ignore[arg-type]

    def _serve_unserved(self) -> None:
        unserved, self._unserved = self._unserved, None
        if unserved is not None and unserved[1] is self._current:
            unserved[0].render(unserved[1])  # type: ignore[arg-type]

    def answered(self, request: FrontRequest) -> None:
        """C{request}'s answer is complete: the next pipelined one, or the close."""
        if request is not self._current:
            return
        self._give_back()
        self._current = None
        if not request.keep_alive or not request.agw_body.complete:
            # A body not read to its end cannot be told apart from the next request.
            self.transport.loseConnection()
            return
        self._active = self._clock.seconds()
        if self._starting:
            return  # answered as it started (agw's own answer): the loop below, up the stack, goes on
        self._starting = True
        try:  # a loop, not a call per request: a thousand pipelined refusals would each add frames
            while self._current is None and self._waiting:
                self._start(self._waiting.popleft())
        finally:
            self._starting = False
        if not self._waiting:
            self.resume("pipelined")

    def _give_back(self) -> None:
        if self._held:
            self.site.body_budget.give_back(self._held)
            self._held = 0

    def _refuse(self, refusal: Refusal) -> None:
        """agw's answer to what it will not read on (a body too large, too slow; a bad head): then the close."""
        method = self._reading.method if self._reading is not None else (self._current.method if self._current else b"")
        self._stop_pace()
        if self._current is None or not self._current.startedWriting:
            self.transport.write(refusal_bytes(refusal.status, refusal.message, refusal.code, refusal.error_type))
        self._count(method, refusal.status)
        self.transport.loseConnection()
        self._closed = True  # nothing more is read

    def _count(self, method: bytes, status: int) -> None:
        if self.site.refused is not None:
            self.site.refused(method, status)

    def _hand_off(self, request: FrontRequest, decided: HandOff | TakeOver) -> None:
        """C{request} and the rest of the connection go to the bind's twisted.web site, or the relay's protocol."""
        self._current = None
        handoff = self._handoff = (SessionTakeover(decided.factory, self.transport) if isinstance(decided, TakeOver)
                                   else WebHandoff(self.site, self.transport))
        if self._idle is not None and self._idle.active():
            self._idle.cancel()  # the channel times itself out (Autobahn: its open-handshake timeout)
        self.resume("pipelined")
        for each in (request, *self._waiting):  # those pipelined behind it are twisted.web's too, in order
            handoff.request(each)
        self._waiting.clear()
        if self._raw is not None:
            handoff.replay(self._raw)

    # Flow and time.

    def pause(self, reason: str) -> None:
        """Stop reading from the client for C{reason} (see L{ReadFlow})."""
        self._flow.pause(reason)

    def resume(self, reason: str) -> None:
        """C{reason} to stop reading is gone (see L{ReadFlow})."""
        self._flow.resume(reason)

    def _stop_pace(self) -> None:
        if self._pace is not None:
            self._pace.stop()
            self._pace = None

    def _check_idle(self) -> None:
        """The connection's one timer: a head must arrive whole within the timeout (a client trickling
        one header byte at a time holds a connection for ever otherwise); one silent that long, idle, is closed."""
        timeout, now = self.site.timeOut, self._clock.seconds()
        self._idle = None
        if self._head_started is not None and now - self._head_started >= timeout:
            return self._refuse(Refusal(408, f"the request head did not arrive within {timeout:g} s", "request_timeout"))
        left = (self._head_started if self._head_started is not None else self._active) + timeout - now
        if self._current is not None or self._reading is not None and self._head_started is None:
            left = timeout  # answering, or a body arriving (paced by UploadPace)
        if left > 0:
            self._idle = self._clock.callLater(left, self._check_idle)
            return
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._parser = None  # it holds this door's methods: a reference cycle, freed only by the garbage collector
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._stop_pace()
        if self._handoff is not None:
            self._handoff.connectionLost(reason)
        for request in (self._current, *self._waiting, self._reading):
            if request is not None:
                request.connectionLost(reason)
        self._give_back()


class FrontDoorFactory(Factory):
    """Builds a L{FrontDoor} for each connection of C{site}'s bind."""

    noisy = False

    def __init__(self, site: GatewaySite) -> None:
        self.site = site
        self._date = HTTPDate()

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802
        return FrontDoor(self.site, self._date)
