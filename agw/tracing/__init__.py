"""
Traces: agentgateway's C{config.tracing} as OpenTelemetry spans exported
over OTLP/HTTP (L{OTelSpans}, an L{agw.metering.SpanSink}). Needs the
OpenTelemetry SDK (C{pip install 'agw[tracing]'}).
"""

from agw.tracing._otel import OTelSpans, tracing_available

__all__ = ["OTelSpans", "tracing_available"]
