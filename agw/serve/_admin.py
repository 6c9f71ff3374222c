"""
The stats and readiness listeners' resources: C{/metrics} (one registry,
Prometheus' text format) and C{/healthz/ready}. adminAddr's page and JSON
are L{agw.serve._admin_page}'s.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request


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
    """
    C{/healthz/ready}: 200 once C{is_ready()} says so, 503 before; the
    body adds C{notes()} (a degraded part, such as an unreachable budget ledger).
    """

    isLeaf = True

    def __init__(self, is_ready: Callable[[], bool], notes: Callable[[], list[str]] = list) -> None:
        super().__init__()
        self._is_ready = is_ready
        self._notes = notes

    def render_GET(self, request: Request) -> bytes:
        notes = "".join(f"{note}\n" for note in self._notes())
        if self._is_ready():
            return b"ready\n" + notes.encode()
        request.setResponseCode(503)
        return b"not ready\n" + notes.encode()


def stats_root(registry: CollectorRegistry) -> Resource:
    """The stats listener's tree: C{/metrics}."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return root


def readiness_root(is_ready: Callable[[], bool], notes: Callable[[], list[str]] = list) -> Resource:
    """The readiness listener's tree: C{/healthz/ready}."""
    root = Resource()
    healthz = Resource()
    root.putChild(b"healthz", healthz)
    healthz.putChild(b"ready", ReadinessResource(is_ready, notes))
    return root
