"""
One Realtime session's accounting: what the usage mixin finds is recorded
at once, response by response, so nothing waits for the session to end.
"""

from __future__ import annotations

from agw.metrics import GatewayMetrics, ModelLabels, RouteLabels
from agw.usage import AudioDuration, TokenUsage


class RealtimeSession:
    """The L{UsageSink} of one relayed session."""

    def __init__(self, metrics: GatewayMetrics, route: RouteLabels, request_model: str | None) -> None:
        self._metrics = metrics
        self._route = route
        self.request_model = request_model
        self.response_model: str | None = None
        self._open = False

    def started(self) -> None:
        """Both legs are open."""
        self._open = True
        self._metrics.realtime_sessions.labels(*self._route.values()).inc()

    def ended(self) -> None:
        """The session is over (idempotent)."""
        if self._open:
            self._open = False
            self._metrics.realtime_sessions.labels(*self._route.values()).dec()

    def _models(self, operation: str) -> ModelLabels:
        return ModelLabels(operation, self.request_model, self.response_model)

    def model_changed(self, model: str) -> None:
        self.response_model = model

    def tokens_used(self, operation: str, usage: TokenUsage) -> None:
        self._metrics.record_tokens(self._route, self._models(operation), usage)

    def audio_used(self, operation: str, duration: AudioDuration) -> None:
        self._metrics.record_audio(self._route, self._models(operation), duration)
