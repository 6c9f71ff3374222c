"""
The admin listeners' resources: C{/metrics} (one registry, Prometheus' text
format), C{/healthz/ready}, and on C{adminAddr} C{/budgets} (each
consumer's budgets, never the keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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


class BudgetsResource(Resource):
    """C{/budgets}: where every budget of every consumer stands (JSON)."""

    isLeaf = True

    def __init__(self, governor: Any, clock: Any) -> None:
        super().__init__()
        self._governor = governor
        self._clock = clock

    def render_GET(self, request: Request) -> bytes:
        now = self._clock.seconds()
        consumers = [
            {"name": name, "budgets": [state.as_json(now) for state in self._governor.states(name)]}
            for name in self._governor.consumers
        ]
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        return json.dumps({"consumers": consumers}).encode()


def admin_root(governor: Any, clock: Any) -> Resource:
    """The admin listener's tree: C{/budgets}."""
    root = Resource()
    root.putChild(b"budgets", BudgetsResource(governor, clock))
    return root
