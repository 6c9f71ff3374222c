"""
Small twisted.web pieces: OpenAI-shaped JSON errors, the metrics page and
the readiness probe.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site


def client_host(request: Request) -> str | None:
    """The IP address of the client's TCP peer, if it has one."""
    return getattr(request.getClientAddress(), "host", None)


def client_gone(request: Request) -> bool:
    """Whether the client's connection is gone (twisted.web's private flag; see its Request.connectionLost)."""
    return bool(getattr(request, "_disconnected", False))


def error_body(message: str, error_type: str, code: str | None) -> bytes:
    """OpenAI's error shape: C{{"error": {"message", "type", "code"}}}."""
    return json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()


# Phrases twisted.web does not know.
_PHRASES = {426: b"Upgrade Required", 499: b"Client Closed Request"}


def render_error(request: Request, status: int, message: str, code: str, error_type: str = "gateway_error") -> bytes:
    """Set C{status} and JSON headers on C{request}; return the error body."""
    request.setResponseCode(status, _PHRASES.get(status))
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    return error_body(message, error_type, code)


class GatewayRequest(Request):
    """
    The request class of the gateway's own sites (L{GatewaySite}).

    twisted.web answers an asterisk-form target (C{OPTIONS *}) itself,
    before any resource sees it; a gateway has nothing to say about itself
    there, so it gets the same 400 as every other target that is not a path.

    A body larger than the site's C{max_request_body} is refused with 413
    as soon as that is known: at once from C{Content-Length} (before a
    client that sent C{Expect: 100-continue} uploads anything), or when a
    chunked body passes the limit. The connection is closed, and the
    request never reaches a resource: nothing goes upstream.
    """

    _body_refused = False
    _body_received = 0

    def gotLength(self, length: int | None) -> None:
        limit = self._body_limit()
        if limit is not None and length is not None and length > limit:
            self._refuse_body(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_received += len(data)
        limit = self._body_limit()
        if limit is not None and self._body_received > limit:
            self._refuse_body(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._body_refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _body_limit(self) -> int | None:
        return getattr(getattr(self.channel, "site", None), "max_request_body", None)

    def _refuse_body(self, limit: int) -> None:
        self._body_refused = True
        # No "100 Continue" after this answer (twisted.web sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        body = error_body(f"request body is larger than {limit} bytes", "invalid_request_error", "request_too_large")
        head = b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        transport = self.channel.transport
        transport.write(head % len(body) + body)
        transport.loseConnection()

    def process(self) -> None:
        if self.path == b"*":
            body = render_error(self, 400, "the request-target must be a path starting with '/' (origin-form)",
                                "invalid_request_target", "invalid_request_error")
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()


class GatewaySite(Site):
    """A twisted.web site of L{GatewayRequest}s; C{max_request_body} bytes at most per request body (C{None}: no limit)."""

    requestFactory = GatewayRequest

    def __init__(self, resource: IResource, reactor: object, max_request_body: int | None = None) -> None:
        super().__init__(resource, reactor=reactor)  # type: ignore[arg-type]
        self.max_request_body = max_request_body


class ErrorResource(Resource):
    """Answers every request with one JSON error."""

    isLeaf = True

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__()
        self._status, self._message, self._code = status, message, code

    def render(self, request: Request) -> bytes:
        return render_error(request, self._status, self._message, self._code)


class MetricsResource(Resource):
    """C{/metrics} in Prometheus' text format, from one registry."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(b"content-type", [CONTENT_TYPE_LATEST.encode()])
        return generate_latest(self._registry)


class ReadinessResource(Resource):
    """C{/healthz/ready}: 200 once C{is_ready()} says so, 503 before."""

    isLeaf = True

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        super().__init__()
        self._is_ready = is_ready

    def render_GET(self, request: Request) -> bytes:
        if self._is_ready():
            return b"ready\n"
        request.setResponseCode(503)
        return b"not ready\n"


def stats_root(registry: CollectorRegistry) -> Resource:
    """The stats listener's tree: C{/metrics}."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return root


def readiness_root(is_ready: Callable[[], bool]) -> Resource:
    """The readiness listener's tree: C{/healthz/ready}."""
    root = Resource()
    healthz = Resource()
    root.putChild(b"healthz", healthz)
    healthz.putChild(b"ready", ReadinessResource(is_ready))
    return root
