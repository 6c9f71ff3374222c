"""
One Realtime session's accounting: what the usage mixin finds is recorded
at once, response by response, so nothing waits for the session to end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from agw.config import BudgetUnit
from agw.metering._accesslog import NO_ACCESS_LOG, AccessLog, cost_fields, duration_fields, model_fields, usage_fields
from agw.metering._attribution import Attribution
from agw.metering._budgets import Governor
from agw.metering._catalog import Cost
from agw.metering._metrics import GatewayMetrics, ModelLabels, RouteLabels
from agw.metering._ratelimit import RouteLimits
from agw.metering._realtime_metrics import close_code_label
from agw.metering._spans import NO_SPAN, Span, span_name
from agw.metering._usage import AudioDuration, TokenUsage

CLIENT_TO_UPSTREAM = "client_to_upstream"
UPSTREAM_TO_CLIENT = "upstream_to_client"
CHAT = "chat"  # agentgateway's operation name for Realtime responses
TRANSCRIPTION = "transcription"
_MAX_REQUESTED_IDS = 64


class RealtimeSession:
    """The L{UsageSink} of one relayed session, and its session metrics."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        route: RouteLabels,
        request_model: str | None,
        clock: Callable[[], float],
        access_log: AccessLog = NO_ACCESS_LOG,
        who: Attribution | None = None,
        governor: Governor | None = None,
        limits: RouteLimits | None = None,
        request: Mapping[str, Any] | None = None,
        span: Span = NO_SPAN,
    ) -> None:
        self._metrics = metrics
        self._span = span  # the session's (config.tracing); each response is a child
        self._traced = span is not NO_SPAN  # without tracing, no response timing is kept for spans
        self._asked_at: list[float] = []  # when unacknowledged response.create events came, oldest first
        self._response_started_at: dict[str | None, float] = {}
        self._last_ttft: float | None = None
        # The upgrade request (src.addr, http.path), for the session's record.
        self._request = dict(request or {})
        self._governor = governor
        self._limits = limits
        self.who = who if who is not None else metrics.anonymous
        self._consumer = self.who.name
        # Who the session is for (the apiKey's metadata.name), in every record of it.
        self._who = dict(self.who.log_fields)
        self._route = route
        self._clock = clock
        self._log = access_log
        self.request_model = request_model
        self.response_model: str | None = None
        self.transcription_model: str | None = None
        self.responses_in_progress = 0
        # Responses the client asked for that the provider has not
        # acknowledged (response.created) yet: billed all the same.
        self.responses_requested = 0
        # In-flight response ids, oldest first (for response.cancel).
        self.in_flight: dict[str, None] = {}
        # event_ids of unacknowledged response.create events, newest last
        # (bounded: a provider error naming one means it never bills).
        self._requested_ids: dict[str, None] = {}
        self.responses = 0
        self.responses_refused = 0  # response.create events a budget stopped
        self.started_at: float | None = None
        self._ttft_from: float | None = None
        self.totals = {"input": 0, "output": 0, "input_cache_read": 0}
        self.cost = Decimal(0)  # USD, every priced report of the session
        labels = route.values()
        self._messages = {d: metrics.realtime.messages.labels(*labels, d) for d in (CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT)}
        self._bytes = {d: metrics.realtime.bytes.labels(*labels, d) for d in (CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT)}
        # Messages and bytes relayed since the last flush, per direction.
        self._unflushed = {CLIENT_TO_UPSTREAM: [0, 0], UPSTREAM_TO_CLIENT: [0, 0]}

    def started(self) -> None:
        """Both legs are open."""
        self.started_at = self._clock()
        self._metrics.realtime.sessions.labels(*self._metrics.session_labels(self._route, self.who)).inc()

    def ended(self, close_code: int | None, reason: str | None) -> None:
        """The client's leg is closed (idempotent)."""
        if self.started_at is None:
            return
        self.flush()
        duration = self._clock() - self.started_at
        self.started_at = None
        labels = self._metrics.session_labels(self._route, self.who)
        self._metrics.realtime.sessions.labels(*labels).dec()
        self._metrics.realtime.session_duration.labels(*labels).observe(duration)
        self._metrics.realtime.closes.labels(*self._route.values(), close_code_label(close_code)).inc()
        fields = {
            **self._request, **duration_fields(duration), "websocket.close_code": close_code, "agw.responses": self.responses,
            "agw.responses_in_progress": self.responses_in_progress, "agw.responses_unacknowledged": self.responses_requested,
            **{f"agw.session.{k}_tokens": v for k, v in self.totals.items()},
            "agw.session.cost_usd": float(self.cost), "agw.responses_refused": self.responses_refused, **self._who,
        }
        self._log.emit("realtime.session", self._route, self._models(CHAT), **fields)
        self._span.end(f"realtime {self.request_model or ''}".strip(), self._clock(), {**model_fields(self._models(CHAT)), **fields})

    @property
    def traceparent(self) -> str | None:
        """The session span's W3C C{traceparent}, for the upstream handshake (C{None}: not traced)."""
        return self._span.traceparent

    def handshake_refused(self, status: int) -> None:
        """The client's handshake was answered C{status}: the session never opened."""
        self._span.end(
            f"realtime {self.request_model or ''}".strip(), self._clock(), {**self._request, "http.response.status_code": status},
            error=status >= 500,
        )

    def relayed(self, direction: str, size: int) -> None:
        """
        One message of C{size} bytes passed. Counted here and added to the
        metrics by L{flush}: two counter increments per message would cost
        more than the rest of the accounting.
        """
        unflushed = self._unflushed[direction]
        unflushed[0] += 1
        unflushed[1] += size

    def dropped(self, direction: str) -> None:
        """A message could not be relayed: its receiver was already closing."""
        self._metrics.realtime.dropped.labels(*self._route.values(), direction).inc()

    def flush(self) -> None:
        """Add the messages and bytes relayed since the last flush to the metrics."""
        for direction, unflushed in self._unflushed.items():
            if unflushed[0]:
                self._messages[direction].inc(unflushed[0])
                self._bytes[direction].inc(unflushed[1])
                unflushed[0] = unflushed[1] = 0

    def _models(self, operation: str) -> ModelLabels:
        if operation == TRANSCRIPTION:
            # Transcription is served by the session's transcription model.
            return ModelLabels(operation, self.transcription_model, self.transcription_model)
        return ModelLabels(operation, self.request_model, self.response_model)

    # UsageSink

    def model_changed(self, model: str) -> None:
        self.response_model = model

    def transcription_model_changed(self, model: str) -> None:
        self.transcription_model = model

    def response_requested(self, event_id: str | None = None) -> None:
        """The client sent C{response.create} (with C{event_id}, if it gave one): time to first token starts."""
        self.responses_requested += 1
        if event_id is not None:
            self._requested_ids[event_id] = None
            if len(self._requested_ids) > _MAX_REQUESTED_IDS:
                del self._requested_ids[next(iter(self._requested_ids))]
        if self._ttft_from is None:
            self._ttft_from = self._clock()
        if self._traced and len(self._asked_at) < _MAX_REQUESTED_IDS:
            self._asked_at.append(self._clock())

    def request_failed(self, event_id: str) -> None:
        """The provider answered a client event with an error: if it was a C{response.create}, no response comes."""
        if event_id in self._requested_ids:
            del self._requested_ids[event_id]
            self.responses_requested = max(0, self.responses_requested - 1)
            if self._asked_at:
                self._asked_at.pop()

    @property
    def awaiting_usage(self) -> bool:
        """Whether a response was asked for or started and has not reported its usage."""
        return bool(self.responses_in_progress or self.responses_requested)

    @property
    def awaiting_first_delta(self) -> bool:
        return self._ttft_from is not None

    def first_delta(self) -> None:
        if self._ttft_from is not None:
            elapsed, self._ttft_from = self._clock() - self._ttft_from, None
            self._last_ttft = elapsed
            labels = self._metrics.model_values(self._models(CHAT)) + self._route.values()
            self._metrics.time_to_first_token.labels(*labels).observe(elapsed)

    def rate_limits(self) -> list[dict[str, Any]]:
        """agw's limits for C{rate_limits.updated}: the route's buckets, each budget of the consumer (OpenAI's shape)."""
        limits = self._limits.rate_limits() if self._limits is not None else []
        if self._governor is None:
            return limits
        now = self._clock()
        return limits + [
            {"name": f"agw.budget.{state.budget.name}", "limit": float(state.budget.amount),
             "remaining": float(state.remaining), "reset_seconds": round(state.window_end - now, 3)}
            for state in self._governor.states(self._consumer)
        ]

    def refused(self) -> None:
        """A C{response.create} was not forwarded: a budget forbade it."""
        self.responses_refused += 1
        self._metrics.realtime.refusals.labels(*self._route.values(), "response.create").inc()

    def refusal(self, spend: bool = True) -> tuple[str, str] | None:
        """
        Why a new response may not start, if it may not: an exhausted
        C{Block} budget, or an empty rate-limit bucket (as C{(error type,
        message)} for the client's C{error} event). Checked before each
        C{response.create}, which spends a C{requests} token (C{spend}).
        """
        exhausted = self._governor.blocking(self._consumer) if self._governor is not None else None
        if exhausted is not None:
            budget = exhausted.budget
            tokens = budget.unit is BudgetUnit.TOKENS
            return ("tokens" if tokens else "requests"), (
                f"Budget {budget.name!r} of this API key is exhausted: {exhausted.spent} of {budget.amount} "
                f"{'tokens' if tokens else 'USD'} used in the current window, which ends at Unix time {exhausted.window_end}."
            )
        if self._limits is not None:
            empty = self._limits.admit() if spend else self._limits.empty()
            if empty is not None:
                return empty.kind, (
                    f"Rate limit reached for {empty.kind} on this route (localRateLimit of {empty.capacity}); "
                    f"try again in {empty.reset_seconds:.3f}s."
                )
        return None

    def response_started(self, response_id: str | None) -> tuple[str, str] | None:
        """
        A response began; if the server started it on its own (server VAD:
        no request of the client's is waiting) while a budget is exhausted,
        the budget that forbids it (the caller cancels it; its usage is
        still counted and charged).
        """
        # A response the server started on its own answers no request; one
        # the client asked for answers the oldest request.
        refused = self.refusal(spend=False) if not self.responses_requested else None
        self.responses_requested = max(0, self.responses_requested - 1)
        if not self.responses_requested:
            self._requested_ids.clear()  # every request answered
            self._asked_at = self._asked_at[:1]
        self.responses_in_progress += 1
        if response_id is not None:
            self.in_flight[response_id] = None
        # A response's span starts at the response.create it answers (now, if the server started it).
        if self._traced:
            started = self._asked_at.pop(0) if self._asked_at else self._clock()
            if len(self._response_started_at) < _MAX_REQUESTED_IDS:
                self._response_started_at[response_id] = started
        return refused

    def response_finished(self, response_id: str | None, status: str | None, usage: TokenUsage | None) -> None:
        self.responses_in_progress = max(0, self.responses_in_progress - 1)
        if response_id is not None:
            self.in_flight.pop(response_id, None)
        self.responses += 1
        cost = self.tokens_used(CHAT, usage) if usage is not None else None
        fields = {"status": status, **usage_fields(usage), **cost_fields(cost), **self._who}
        self._log.emit("realtime.response", self._route, self._models(CHAT), **fields)
        ttft, self._last_ttft = self._last_ttft, None
        if not self._traced:
            return
        now = self._clock()
        self._span.child(
            span_name(CHAT, self.request_model, CHAT), self._response_started_at.pop(response_id, now), now,
            {**model_fields(self._models(CHAT)), **fields, **({"gen_ai.server.time_to_first_token": ttft} if ttft is not None else {})},
        )

    def tokens_used(self, operation: str, usage: TokenUsage) -> Cost:
        cost = self._metrics.record_tokens(self._route, self._models(operation), usage, self.who)
        self.cost += cost.total
        if self._governor is not None:
            self._governor.charge(self._consumer, cost, usage.input + usage.output)
        if self._limits is not None:
            self._limits.charge(usage.input + usage.output)
        self.totals["input"] += usage.input
        self.totals["output"] += usage.output
        self.totals["input_cache_read"] += usage.cached_input or 0
        if operation != CHAT:
            self._log.emit(
                f"realtime.{operation}", self._route, self._models(operation), **usage_fields(usage), **cost_fields(cost),
                **self._who,
            )
        return cost

    def audio_used(self, operation: str, duration: AudioDuration) -> None:
        cost = self._metrics.record_audio(self._route, self._models(operation), duration, self.who)
        self.cost += cost.total
        if self._governor is not None:
            self._governor.charge(self._consumer, cost, 0)
        self._log.emit(
            f"realtime.{operation}", self._route, self._models(operation), **{"agw.usage.audio_seconds": duration.seconds},
            **cost_fields(cost), **self._who,
        )
