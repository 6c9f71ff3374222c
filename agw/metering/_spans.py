"""
Where traces go: the accounting opens a span per HTTP request and per
Realtime session, with a child span per Realtime response, and ends each
with the same fields its access-log record has. L{NO_SPANS} (no
C{config.tracing}) does nothing; L{agw.tracing} exports over OTLP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Span(Protocol):
    """One open span."""

    @property
    def traceparent(self) -> str | None:
        """The W3C C{traceparent} for the upstream request (C{None}: not traced)."""

    def child(self, name: str, start: float, end: float, fields: Mapping[str, Any]) -> None:
        """A finished child span (a Realtime response), from C{start} to C{end} (Unix seconds)."""

    def end(self, name: str, end: float, fields: Mapping[str, Any], error: bool = False) -> None:
        """Finish it at C{end}, named C{name}, with C{fields} as attributes."""


class SpanSink(Protocol):
    """Opens spans."""

    def start(self, name: str, start: float, traceparent: str | None) -> Span:
        """A span starting at C{start}, child of the client's C{traceparent} header if it sent one."""


class _NoSpan:
    traceparent = None

    def child(self, name: str, start: float, end: float, fields: Mapping[str, Any]) -> None:
        pass

    def end(self, name: str, end: float, fields: Mapping[str, Any], error: bool = False) -> None:
        pass


class _NoSpans:
    def start(self, name: str, start: float, traceparent: str | None) -> Span:
        return NO_SPAN


NO_SPAN: Span = _NoSpan()
NO_SPANS: SpanSink = _NoSpans()


def span_name(operation: str | None, model: str | None, fallback: str) -> str:
    """OpenTelemetry's gen_ai span name: C{"chat gpt-4"}; C{fallback} (the HTTP method) for other requests."""
    if operation is None:
        return fallback
    return f"{operation} {model}" if model else operation
