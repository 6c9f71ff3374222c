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

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from agw._internals import OwnBadRequests, request_method, request_target
from agw.routing import error_body, render_error
from agw.serve._uploads import BodyBudget, UploadPace


NOT_ORIGIN_FORM = "the request-target must be a path starting with '/' (origin-form)"


def host_name(host: str) -> str:
    """The host of a C{Host} header, without its port or an IPv6 address's brackets (as routing reads it)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


def refusal_bytes(status: int, message: str, code: str, error_type: str | None = None) -> bytes:
    """A whole answer (head and OpenAI-shaped body) that ends the connection."""
    body = error_body(message, error_type or ("invalid_request_error" if status < 500 else "gateway_error"), code)
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n"
    if status == 503:
        head += b"Retry-After: 1\r\n"
    return head % (status, RESPONSES.get(status, b"Refused"), len(body)) + b"\r\n" + body


class GatewayChannel(OwnBadRequests):
    """The HTTP/1.1 channel of a L{GatewaySite}: its answer to what it cannot parse is an OpenAI error, counted."""

    site: GatewaySite

    def bad_request(self, method: bytes) -> None:
        self.transport.write(refusal_bytes(400, "the request could not be read as HTTP/1.1", "invalid_request"))
        self.loseConnection()
        if self.site.refused is not None:
            self.site.refused(method, 400)


class GatewayRequest(Request):
    """
    The request class of L{GatewaySite}.

    twisted.web answers an asterisk-form target (C{OPTIONS *}) itself,
    before any resource sees it; a gateway has nothing to say about itself
    there, so it gets the same 400 as every other target that is not a path.

    A body larger than the site's C{max_request_body} is refused with 413
    as soon as that is known: at once from C{Content-Length} (before a
    client that sent C{Expect: 100-continue} uploads anything), or when a
    chunked body passes the limit. A body holds the site's L{BodyBudget}
    as its bytes arrive (over it: 503), and must keep arriving at the
    site's L{UploadPace} (slower: 408). A client that waits for C{100
    Continue} is first asked about by the site's resource (its client key,
    L{agw.routing.BindResource.refusal_before_body}): one it would refuse
    is refused before uploading. Each time the connection is closed, and
    the request never reaches a resource: nothing goes upstream.
    """

    _body_refused = False
    _body_received = 0
    _body_held = 0
    _pace: UploadPace | None = None

    @property
    def _gateway_site(self) -> GatewaySite | None:
        site = getattr(self.channel, "site", None)
        return site if isinstance(site, GatewaySite) else None

    def gotLength(self, length: int | None) -> None:
        site = self._gateway_site
        if site is not None:
            if length is not None and site.max_request_body is not None and length > site.max_request_body:
                self._too_large(site.max_request_body)
                return
            if self._refused_before_upload(site):
                return
            if site.upload_min_rate > 0 and length != 0:
                rate = site.upload_min_rate
                self._pace = UploadPace(site.upload_clock, site.upload_grace, rate, lambda: self._refuse_body(
                    408, f"the request body arrived slower than {rate} bytes a second", "request_timeout",
                ))
        super().gotLength(length)

    def _too_large(self, limit: int) -> None:
        self._refuse_body(413, f"request body is larger than {limit} bytes" if limit else "this listener takes no request body",
                          "request_too_large")

    def _refused_before_upload(self, site: GatewaySite) -> bool:
        """Whether a client waiting for C{100 Continue} was refused instead (its client key)."""
        check = getattr(site.resource, "refusal_before_body", None)
        if check is None or b"100-continue" not in (self.getHeader(b"expect") or b"").lower():
            return False

        def header(name: str) -> str | None:
            value = self.getHeader(name.encode("latin-1"))
            return value.decode("latin-1") if value is not None else None

        refused = check(request_method(self), request_target(self), host_name(header("host") or ""), header)
        if refused is None:
            return False
        self._refuse_body(refused.status, refused.message, refused.code, refused.error_type)
        return True

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_received += len(data)
        if self._pace is not None:
            self._pace.received = self._body_received
        site = self._gateway_site
        if site is not None:
            if site.max_request_body is not None and self._body_received > site.max_request_body:
                self._too_large(site.max_request_body)
                return
            # Held as it arrives: a length announced and not sent holds nothing.
            if not self._hold(site, self._body_received - self._body_held):
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

    def _stop_pace(self) -> None:
        if self._pace is not None:
            self._pace.stop()
            self._pace = None

    def connectionLost(self, reason: Any) -> None:
        self._stop_pace()
        super().connectionLost(reason)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_pace()  # the whole body is in
        if self._body_refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse_body(self, status: int, message: str, code: str, error_type: str | None = None) -> None:
        self._body_refused = True
        self._stop_pace()
        # No "100 Continue" after this answer (twisted.web sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        transport = self.channel.transport
        transport.write(refusal_bytes(status, message, code, error_type))
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
            body = render_error(self, 400, NOT_ORIGIN_FORM, "invalid_request_target", "invalid_request_error")
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
    C{max_buffered_bodies} bytes of bodies held at once, uploads at
    C{upload_min_rate} bytes a second at least after C{upload_grace}
    seconds (0: no minimum). Bodies are bytes to forward: a form is not
    parsed into C{request.args}.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel

    def __init__(
        self, resource: IResource, reactor: object, max_request_body: int | None = None,
        max_buffered_bodies: int = 2**62, refused: Callable[[bytes, int], None] | None = None,
        upload_min_rate: int = 0, upload_grace: float = 20.0,
    ) -> None:
        # No parsing of form uploads into request.args: a second, parsed copy
        # of every multipart body (a /v1/files upload), which nothing reads.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)  # type: ignore[arg-type]
        self.max_request_body = max_request_body
        self.body_budget = BodyBudget(max_buffered_bodies)
        # Told of each request the site refuses itself (its method, status): a bind's counts them.
        self.refused = refused
        # Bytes a second an upload must keep up after its grace period (0: any pace); timed on upload_clock.
        self.upload_min_rate, self.upload_grace = upload_min_rate, upload_grace
        self.upload_clock: IReactorTime = reactor  # type: ignore[assignment]

    def log(self, request: Request) -> None:
        """
        Write nothing: the gateway's own access log records each exchange
        (see L{agw.metering.AccessLog}). twisted.web's combined log line
        would be a second, unredacted one, with the whole request-target
        (a key in the query string) and the client's headers, formatted
        at a cost on every request.
        """
