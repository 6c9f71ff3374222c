"""
One Realtime session's accounting: what the usage mixin finds is recorded
at once, response by response, so nothing waits for the session to end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from agw.metering._accesslog import NO_ACCESS_LOG, AccessLog, cost_fields, duration_fields, model_fields, usage_fields
from agw.metering._attribution import Attribution
from agw.metering._budgets import Governor
from agw.metering._catalog import Cost
from agw.decisions import Denial, RouteLimits
from agw.metering._metrics import GatewayMetrics, ModelLabels, RouteLabels
from agw.metering._reservation import NO_RESERVATION, Reservation
from agw.metering._responses import ResponseQueue
from agw.metering._realtime_metrics import MessageCounts, close_code_label
from agw.metering._spans import NO_SPAN, Span, span_name
from agw.metering._usage import AudioDuration, TokenUsage

CLIENT_TO_UPSTREAM = "client_to_upstream"
UPSTREAM_TO_CLIENT = "upstream_to_client"
CHAT = "chat"  # agentgateway's operation name for Realtime responses
TRANSCRIPTION = "transcription"
# response.create events the provider has not answered yet, per session: a client
# sending them without end is refused past this (each is remembered until answered).
MAX_UNACKNOWLEDGED = 256


class RealtimeSession:
    """The L{UsageSink} of one session (C{transport}: C{websocket} relayed, C{webrtc} a call's sideband), and its metrics."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        route: RouteLabels,
        request_model: str | None,
        clock: Callable[[], float],
        access_log: AccessLog = NO_ACCESS_LOG, who: Attribution | None = None,
        governor: Governor | None = None, limits: RouteLimits | None = None,
        request: Mapping[str, Any] | None = None,
        span: Span = NO_SPAN, transport: str = "websocket",
    ) -> None:
        self._metrics = metrics
        self._span = span  # the session's (config.tracing); each response is a child
        self._traced = span is not NO_SPAN
        self._last_ttft: float | None = None
        # The upgrade request (src.addr, http.path), for the session's record.
        self._request = dict(request or {})
        self._governor = governor
        self._limits = limits
        self.who = who if who is not None else metrics.anonymous
        self._consumer = self.who.name
        # Who the session is for (the apiKey's metadata.name) and how it reached the provider, in every record of it.
        self._who = {**self.who.log_fields, "agw.transport": transport}
        self.route, self.transport = route, transport
        self.id = uuid.uuid4().hex[:16]  # how the admin page names it (random: not guessable from another)
        self._clock = clock
        self._log = access_log
        self.request_model = request_model
        self.response_model: str | None = None
        self.transcription_model: str | None = None
        # Responses asked for (a provider error naming the request means it never bills) and under way.
        self._queue = ResponseQueue()
        self.in_flight = self._queue.in_flight  # response ids, oldest first (for response.cancel)
        self._server_starts = False  # the provider started a response on its own (server VAD)
        self.responses = 0
        self.responses_refused = 0  # response.create events a budget stopped
        self.started_at: float | None = None
        self._ttft_from: float | None = None
        self.totals = {"input": 0, "output": 0, "input_cache_read": 0}
        self.cost = Decimal(0)  # USD, every priced report of the session
        # Which guard acted on the session and how (agw.guardrail.*: see guard_fields), for its record and span.
        self.guard_fields: dict[str, Any] = {}
        counts = MessageCounts(metrics.realtime, route.values(), (CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT))
        # Called per relayed message: the counter's own bound methods, not a call through the session.
        self.relayed, self.dropped, self.flush = counts.relayed, counts.dropped, counts.flush

    def started(self) -> None:
        """Both legs are open."""
        self.started_at = self._clock()
        self._metrics.realtime.sessions.labels(*self._metrics.session_labels(self.route, self.who)).inc()

    def ended(self, close_code: int | None, reason: str | None) -> None:
        """The client's leg is closed (idempotent)."""
        if self.started_at is None:
            return
        self.flush()
        duration = self._clock() - self.started_at
        self.started_at = None
        labels = self._metrics.session_labels(self.route, self.who)
        self._metrics.realtime.sessions.labels(*labels).dec()
        self._metrics.realtime.session_duration.labels(*labels).observe(duration)
        self._metrics.realtime.closes.labels(*self.route.values(), close_code_label(close_code)).inc()
        self._queue.release_all()
        fields = {
            **self._request, **duration_fields(duration), "websocket.close_code": close_code, "agw.responses": self.responses,
            "agw.responses_in_progress": self.responses_in_progress, "agw.responses_unacknowledged": self.responses_requested,
            **{f"agw.session.{k}_tokens": v for k, v in self.totals.items()},
            "agw.session.cost_usd": float(self.cost), "agw.responses_refused": self.responses_refused, **self._who,
            **self.guard_fields,
        }
        self._log.emit("realtime.session", self.route, self._models(CHAT), **fields)
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

    @property
    def responses_requested(self) -> int:
        """C{response.create} events forwarded and not acknowledged yet: billed all the same."""
        return self._queue.requested

    responses_in_progress = property(lambda self: self._queue.running, doc="Responses under way.")

    def response_requested(self, event_id: str | None = None) -> None:
        """
        The client's C{response.create} (with C{event_id}, if it has one) was
        forwarded: what L{refusal} admitted is held until its usage comes;
        time to first token starts.
        """
        now = self._clock()
        self._queue.asked(event_id, now)
        if self._ttft_from is None:
            self._ttft_from = now

    def request_dropped(self) -> None:
        """The C{response.create} L{refusal} admitted could not be forwarded (the provider's leg was closing)."""
        self._queue.take_admitted().release()

    def request_failed(self, event_id: str) -> None:
        """The provider answered a client event with an error: if it was a C{response.create}, no response comes."""
        self._queue.failed(event_id)

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
            labels = self._metrics.model_values(self._models(CHAT)) + self.route.values()
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
        self._metrics.realtime.refusals.labels(*self.route.values(), "response.create").inc()

    @property
    def priced(self) -> bool:
        """Whether the catalog prices the model this session's responses are billed for."""
        return self._metrics.prices(self._models(CHAT).priced_model)

    def refusal(self, started: bool = False) -> Denial | None:
        """
        Why a new response may not start, if it may not: a C{Block} budget
        (spent, this process's share of it used, too little left for one
        more while others are in flight, a USD budget and an unpriced
        model), or an empty rate-limit bucket. Checked before each
        C{response.create}, which spends a C{requests} token. C{started}: the
        provider started the response on its own (server VAD): only a final
        refusal or an empty bucket stops it, and it spends no request token.
        A response that may start is admitted: it holds its reservation from
        now on (see L{response_requested}, L{request_dropped}).
        """
        if not started and self._queue.requested >= MAX_UNACKNOWLEDGED:
            return Denial.too_many_unacknowledged(MAX_UNACKNOWLEDGED)
        admitted: Reservation = NO_RESERVATION
        if self._governor is not None:
            model = self._models(CHAT).priced_model
            decided = self._governor.admit(self._consumer, self.priced, model, started=started)
            if isinstance(decided, Denial):
                return decided
            admitted = decided
        if self._limits is not None:
            empty = self._limits.empty() if started else self._limits.admit()
            if empty is not None:
                admitted.release()
                return Denial.rate_limited(empty.kind, empty.capacity, empty.reset_seconds)
        self._queue.admitted(admitted)
        return None

    def response_started(self, response_id: str | None) -> Denial | None:
        """
        A response began; if the server started it on its own (server VAD:
        no request of the client's is waiting) and governance forbids it,
        why (the caller cancels it; its usage is still counted and charged).
        """
        # A response the server started on its own answers no request (and is governed now).
        refused, unasked = None, None
        if not self._queue.requested:
            self._server_starts = True
            refused = self.refusal(started=True)
            unasked = self._queue.take_admitted()
        self._queue.started(response_id, self._clock(), unasked)
        return refused

    def response_finished(self, response_id: str | None, status: str | None, usage: TokenUsage | None) -> Denial | None:
        """
        A response ended (with C{usage}, if it reported any). When the provider
        starts responses on its own in this session and that spent the budget
        for good, why the session should end now (see L{response_started}).
        """
        self.responses += 1
        now = self._clock()
        reservation, began = self._queue.finished(response_id, now)
        cost = self.tokens_used(CHAT, usage, reservation) if usage is not None else None
        reservation.release()  # settled above if it reported usage
        fields = {"status": status, **usage_fields(usage), **cost_fields(cost), **self._who}
        self._log.emit("realtime.response", self.route, self._models(CHAT), **fields)
        ttft, self._last_ttft = self._last_ttft, None
        if self._traced:  # a response's span starts at the response.create it answers
            self._span.child(
                span_name(CHAT, self.request_model, CHAT), began, now, {
                    **model_fields(self._models(CHAT)), **fields,
                    **({"gen_ai.server.time_to_first_token": ttft} if ttft is not None else {}),
                },
            )
        if not self._server_starts or self._governor is None:
            return None
        # Each turn would start another response the budget cannot pay for: no need to wait for it.
        denial = self._governor.blocking(self._consumer, self.priced, self._models(CHAT).priced_model)
        return denial if denial is not None and denial.final else None

    def tokens_used(self, operation: str, usage: TokenUsage, reservation: Reservation | None = None) -> Cost:
        """Record C{usage}, and charge it (through the response's C{reservation}, if it held one)."""
        cost = self._metrics.record_tokens(self.route, self._models(operation), usage, self.who)
        self.cost += cost.total
        if reservation not in (None, NO_RESERVATION):
            reservation.settle(cost, usage.input + usage.output)  # type: ignore[union-attr]
        elif self._governor is not None:  # a response that held nothing (the server's, refused; transcription)
            self._governor.charge(self._consumer, cost, usage.input + usage.output)
        if self._limits is not None:
            self._limits.charge(usage.input + usage.output)
        self.totals["input"] += usage.input
        self.totals["output"] += usage.output
        self.totals["input_cache_read"] += usage.cached_input or 0
        if operation != CHAT:
            self._log.emit(
                f"realtime.{operation}", self.route, self._models(operation), **usage_fields(usage), **cost_fields(cost),
                **self._who,
            )
        return cost

    def audio_used(self, operation: str, duration: AudioDuration) -> None:
        cost = self._metrics.record_audio(self.route, self._models(operation), duration, self.who)
        self.cost += cost.total
        if self._governor is not None:
            self._governor.charge(self._consumer, cost, 0)
        self._log.emit(
            f"realtime.{operation}", self.route, self._models(operation), **{"agw.usage.audio_seconds": duration.seconds},
            **cost_fields(cost), **self._who,
        )
