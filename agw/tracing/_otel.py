"""
L{OTelSpans}: spans made with the OpenTelemetry SDK and exported by its
OTLP/HTTP exporter from the SDK's batch thread, so the reactor never waits
on the collector (a slow or absent collector costs dropped spans, never
latency).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Mapping
from typing import Any

from agw.config import TracingConfig
from agw.metering import NO_SPAN, Span

# OpenTelemetry attribute values: str, bool, int, float (None and others are left out).
_SCALARS = (str, bool, int, float)


def tracing_available() -> bool:
    """Whether the OpenTelemetry SDK and its OTLP/HTTP exporter are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if isinstance(value, _SCALARS)}


class OTelSpans:
    """
    An L{agw.metering.SpanSink} for C{config}: a request without a
    C{traceparent} starts a trace with probability C{random_sampling}; one
    with a valid C{traceparent} continues the client's trace with
    probability C{client_sampling}. Call L{shutdown} (blocking: in a thread)
    to flush what is queued.
    """

    def __init__(self, config: TracingConfig, chance: Callable[[], float] = random.random) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._config = config
        self._chance = chance
        # agw decides what is sampled (above); the SDK records what it is given.
        # shutdown_on_exit=False: the gateway's service flushes on stop (see shutdown).
        self._provider = TracerProvider(resource=Resource.create({"service.name": "agw"}), sampler=ALWAYS_ON, shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=config.url, headers={name: secret.value for name, secret in config.headers}, timeout=10)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("agw")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, name: str, start: float, traceparent: str | None) -> Span:
        from opentelemetry import trace

        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        continued = parent is not None and trace.get_current_span(parent).get_span_context().is_valid
        share = self._config.client_sampling if continued else self._config.random_sampling
        if share <= 0 or (share < 1 and self._chance() >= share):
            return NO_SPAN
        span = self._tracer.start_span(name, context=parent if continued else None, kind=trace.SpanKind.SERVER, start_time=_ns(start))
        return _OTelSpan(span, self._tracer, self._propagator)

    def shutdown(self) -> None:
        """Export what is queued and stop (blocks up to the exporter's timeout)."""
        self._provider.shutdown()


class _OTelSpan:
    def __init__(self, span: Any, tracer: Any, propagator: Any) -> None:
        from opentelemetry import trace

        self._span = span
        self._tracer = tracer
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=trace.set_span_in_context(span))  # W3C, as the SDK writes it
        self.traceparent: str | None = carrier.get("traceparent")

    def child(self, name: str, start: float, end: float, fields: Mapping[str, Any]) -> None:
        from opentelemetry import trace

        span = self._tracer.start_span(
            name, context=trace.set_span_in_context(self._span), kind=trace.SpanKind.INTERNAL, start_time=_ns(start),
            attributes=_attributes(fields),
        )
        span.end(_ns(end))

    def end(self, name: str, end: float, fields: Mapping[str, Any], error: bool = False) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.update_name(name)
        self._span.set_attributes(_attributes(fields))
        if error:
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end(_ns(end))
