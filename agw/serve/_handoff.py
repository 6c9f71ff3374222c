"""
The rest of a front-door connection handed to the bind's twisted.web site:
what agw's own door does not serve itself (an upgrade it does not give to
the Realtime relay itself, see L{agw.serve._takeover}; the WebRTC and SIP
endpoints) is served as it always was. From a request on, the door
re-frames what it parses (each head as it came, each body as it came or
re-chunked) for the site's channel; after an upgrade, the bytes go to it as
they arrive.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from agw.routing import HeaderList
from agw.serve._front_request import FrontRequest
from agw.serve._site import GatewaySite


class WebHandoff:
    """The bind's twisted.web channel on C{transport}, fed by the front door from a request on."""

    def __init__(self, site: GatewaySite, transport: Any) -> None:
        self._channel = site.buildProtocol(transport.getPeer())
        self._channel.makeConnection(transport)
        self._chunked = False

    def request(self, request: FrontRequest) -> None:
        """A request the door read the head of (and perhaps some or all of its body): twisted.web's from now on."""
        request.handed_off = True
        self.head(request.method, request.target, request.requestHeaders, request.http11)
        body = request.agw_body
        self.body(body.take_buffered())
        if body.complete:
            self.end()

    def head(self, method: bytes, url: bytes, headers: HeaderList, http11: bool) -> None:
        """A request's head, as the client sent it."""
        self._chunked = not headers.hasHeader(b"content-length") and headers.hasHeader(b"transfer-encoding")
        lines = [b"%s %s HTTP/1.%d" % (method, url, 1 if http11 else 0)]
        lines.extend(name + b": " + value for name, value in headers.pairs)
        lines.append(b"\r\n")
        self.dataReceived(b"\r\n".join(lines))

    def body(self, data: bytes) -> None:
        """Bytes of the request's body (de-chunked by the door: chunked again if they came so)."""
        if data:
            self.dataReceived(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def end(self) -> None:
        """The request's body is complete."""
        if self._chunked:
            self.dataReceived(b"0\r\n\r\n")

    def replay(self, received: list[bytes]) -> None:
        """What arrived after an upgrade's head before the hand-off (emptied: it goes once)."""
        while received:
            self.dataReceived(received.pop(0))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._channel.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._channel.connectionLost(reason)

