"""
Small twisted.web pieces: OpenAI-shaped JSON errors, the metrics page and
the readiness probe. The gateway's own site and request class are in
L{agw.site}.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request


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
