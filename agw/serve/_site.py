"""
The twisted.web site of each of the gateway's listeners, its channel and
its request class: what is refused before a request reaches any resource
(a request twisted.web cannot parse, an asterisk-form target, a body over
the size limit, bodies beyond what one listener may hold at once), each
answered in OpenAI's shape and told to the site's C{refused}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from agw._internals import OwnBadRequests, request_method
from agw.routing import error_body, render_error

_STATUS_LINES = {400: b"400 Bad Request", 413: b"413 Payload Too Large", 503: b"503 Service Unavailable"}


def refusal_bytes(status: int, message: str, code: str) -> bytes:
    """A whole answer (head and OpenAI-shaped body) that ends the connection."""
    body = error_body(message, "invalid_request_error" if status < 500 else "gateway_error", code)
    head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n"
    if status == 503:
        head += b"Retry-After: 1\r\n"
    return head % (_STATUS_LINES[status], len(body)) + b"\r\n" + body


class GatewayChannel(OwnBadRequests):
    """The HTTP/1.1 channel of a L{GatewaySite}: its answer to what it cannot parse is an OpenAI error, counted."""

    site: GatewaySite

    def bad_request(self, method: bytes) -> None:
        self.transport.write(refusal_bytes(400, "the request could not be read as HTTP/1.1", "invalid_request"))
        self.loseConnection()
        if self.site.refused is not None:
            self.site.refused(method, 400)


class BodyBudget:
    """
    Bytes of request bodies one site holds at once. twisted.web keeps a
    body (in memory, or in a temporary file past 100 KB) until the request
    is answered; without a budget, many concurrent uploads could fill the
    disk however small each one is.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold C{size} more bytes; C{False} if that would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class GatewayRequest(Request):
    """
    The request class of L{GatewaySite}.

    twisted.web answers an asterisk-form target (C{OPTIONS *}) itself,
    before any resource sees it; a gateway has nothing to say about itself
    there, so it gets the same 400 as every other target that is not a path.

    A body larger than the site's C{max_request_body} is refused with 413,
    and one the site's L{BodyBudget} cannot hold with 503, as soon as that
    is known: at once from C{Content-Length} (before a client that sent
    C{Expect: 100-continue} uploads anything), or when a chunked body
    passes the limit. The connection is closed, and the request never
    reaches a resource: nothing goes upstream.
    """

    _body_refused = False
    _body_received = 0
    _body_held = 0

    @property
    def _gateway_site(self) -> GatewaySite | None:
        site = getattr(self.channel, "site", None)
        return site if isinstance(site, GatewaySite) else None

    def gotLength(self, length: int | None) -> None:
        site = self._gateway_site
        if site is not None and length is not None:
            if site.max_request_body is not None and length > site.max_request_body:
                self._refuse_body(413, f"request body is larger than {site.max_request_body} bytes", "request_too_large")
                return
            if not self._hold(site, length):
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_received += len(data)
        site = self._gateway_site
        if site is not None:
            if site.max_request_body is not None and self._body_received > site.max_request_body:
                self._refuse_body(413, f"request body is larger than {site.max_request_body} bytes", "request_too_large")
                return
            # A chunked body is held as it arrives (a declared length was held at once).
            if self._body_received > self._body_held and not self._hold(site, self._body_received - self._body_held):
                return
        super().handleContentChunk(data)

    def _hold(self, site: GatewaySite, size: int) -> bool:
        if not site.body_budget.take(size):
            self._refuse_body(503, "the gateway holds too many request bodies; try again later", "too_many_uploads")
            return False
        if not self._body_held:
            self.notifyFinish().addBoth(self._give_back, site)
        self._body_held += size
        return True

    def _give_back(self, result: Any, site: GatewaySite) -> None:
        site.body_budget.give_back(self._body_held)
        self._body_held = 0

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._body_refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse_body(self, status: int, message: str, code: str) -> None:
        self._body_refused = True
        # No "100 Continue" after this answer (twisted.web sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        transport = self.channel.transport
        transport.write(refusal_bytes(status, message, code))
        transport.loseConnection()
        self._count_refusal(status)

    def _count_refusal(self, status: int) -> None:
        site = self._gateway_site
        if site is not None and site.refused is not None:
            site.refused(request_method(self), status)

    def delimit_by_close(self) -> None:
        """
        Answer with a body that ends where the connection does (no length,
        not chunked), as an upstream's did: agw cannot tell whether such a
        body is whole either, and a chunked body would have to say it (a
        last chunk) or deny it (none). twisted.web chunks every HTTP/1.1
        answer without a length, so this one is an HTTP/1.0 answer (RFC 9110
        2.5), and the connection closes after it.
        """
        self.clientproto = b"HTTP/1.0"
        self.setHeader(b"connection", b"close")
        self.channel.persistent = False

    def process(self) -> None:
        if self.path == b"*":
            body = render_error(self, 400, "the request-target must be a path starting with '/' (origin-form)",
                                "invalid_request_target", "invalid_request_error")
            self.setHeader(b"content-length", b"%d" % len(body))
            self._count_refusal(400)
            self.write(body)
            self.finish()
            return
        super().process()


class GatewaySite(Site):
    """
    A twisted.web site of L{GatewayRequest}s on L{GatewayChannel}s:
    C{max_request_body} bytes at most per request body (C{None}: no limit),
    C{max_buffered_bodies} bytes of bodies held at once. Bodies are bytes to
    forward: a form is not parsed into C{request.args}.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel

    def __init__(
        self, resource: IResource, reactor: object, max_request_body: int | None = None,
        max_buffered_bodies: int = 2**62, refused: Callable[[bytes, int], None] | None = None,
    ) -> None:
        # No parsing of form uploads into request.args: a second, parsed copy
        # of every multipart body (a /v1/files upload), which nothing reads.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)  # type: ignore[arg-type]
        self.max_request_body = max_request_body
        self.body_budget = BodyBudget(max_buffered_bodies)
        # Told of each request the site refuses itself (its method, status): a bind's counts them.
        self.refused = refused

    def log(self, request: Request) -> None:
        """
        Write nothing: the gateway's own access log records each exchange
        (see L{agw.metering.AccessLog}). twisted.web's combined log line
        would be a second, unredacted one, with the whole request-target
        (a key in the query string) and the client's headers, formatted
        at a cost on every request.
        """
