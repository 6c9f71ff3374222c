"""
The accounting of one forwarded HTTP request (L{HTTPExchange}): what the
forwarder learns on the way (models, usage, first byte) and, once it is
over, the one record of it in the metrics and the access log.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.interfaces import IAddress

from agw.metering._accesslog import AccessLog, cost_fields, duration_fields, model_fields, peer_address, usage_fields
from agw.metering._attribution import Attribution
from agw.metering._metrics import GatewayMetrics, ModelLabels, RouteLabels
from agw.metering._reservation import NO_RESERVATION, Reservation
from agw.metering._spans import NO_SPAN, Span, span_name
from agw.metering._usage import TokenUsage


def guard_fields(checks: tuple[tuple[str, int, str], ...]) -> dict[str, Any]:
    """
    The access log's word on the guards, from (phase, index, action)
    checks: the one that rejected, else the first that masked, else the
    first that failed open (none if all allowed).
    """
    for wanted in ("reject", "mask", "failOpen"):
        for phase, index, action in checks:
            if action == wanted:
                return {"agw.guardrail.action": action, "agw.guardrail.guard": f"promptGuard.{phase}[{index}]"}
    return {}


@define
class HTTPExchange:
    """
    One forwarded request. C{operation} is the gen_ai operation of a route
    type whose bodies are read (C{None} for passthrough: no model metrics).
    """

    path: bytes
    started: float
    operation: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    usage: TokenUsage | None = None
    first_byte_at: float | None = None
    streamed: bool = False
    # agw asked for stream usage the client did not ask for: remove it again.
    hide_stream_usage: bool = False
    # The response body went silent past the idle timeout and was cut off.
    body_timed_out: bool = False
    # Who made the request (the client key's consumer and metadata), if known.
    who: Attribution | None = None
    # The client's TCP address, if it has one (agentgateway's src.addr, formatted only when a log line or span needs it: see client).
    peer: IAddress | None = None
    # This request's span (config.tracing), ended by record().
    span: Span = NO_SPAN
    # What the request holds of its consumer's budgets until record() charges its usage.
    reservation: Reservation = NO_RESERVATION
    # What each guard did, as (phase, index in promptGuard.<phase>, action): allow, mask, reject or failOpen.
    guard_checks: tuple[tuple[str, int, str], ...] = ()
    # The provider's status when the client got another (a response guard replaced the answer): what it billed counts.
    upstream_status: int | None = None

    @property
    def client(self) -> str | None:
        """agentgateway's C{src.addr}: the client's C{host:port}."""
        return peer_address(self.peer)

    def _fields(self, method: bytes, status: int, duration: float) -> dict[str, Any]:
        """The access log's (and the span's) fields of the request."""
        fields: dict[str, Any] = {
            "src.addr": self.client,
            "http.method": method.decode("ascii", "replace"),
            # The path only: a query string is the client's business.
            "http.path": self.path.decode("utf-8", "replace"),
            "http.status": status,
            **duration_fields(duration),
            **usage_fields(self.usage),
        }
        if self.body_timed_out:
            fields["agw.body_timed_out"] = True
        if self.who is not None:
            fields.update(self.who.log_fields)
        if self.guard_checks:
            fields.update(guard_fields(self.guard_checks))
        return fields

    def report(self, usage: TokenUsage | None, model: str | None) -> None:
        """What a body watcher found (see L{agw.metering.Watcher})."""
        self.usage, self.response_model = usage, model

    def record(
        self, metrics: GatewayMetrics, route: RouteLabels, log: AccessLog, method: bytes, status: int, now: float,
    ) -> None:
        """The request is over (answered C{status} at C{now}): count it and log it, once."""
        duration = now - self.started
        metrics.record_request(route, method, status, duration)
        usage = self.usage
        models = ModelLabels(self.operation, self.request_model, self.response_model) if self.operation else None
        for phase, _, action in self.guard_checks:
            metrics.record_guardrail(route, phase, action, self.who)
        billed = status if self.upstream_status is None else self.upstream_status
        priced = models is not None and usage is not None and 200 <= billed < 300
        cost = metrics.record_tokens(route, models, usage, self.who) if priced else None  # type: ignore[arg-type]
        first = self.first_byte_at
        ttft = first - self.started if first is not None and self.streamed else None
        if log.enabled or self.span is not NO_SPAN:  # the fields cost more than the metrics: built when they go somewhere
            fields = self._fields(method, status, duration)
            log.emit("http", route, models, **fields, **cost_fields(cost))
            if self.span is not NO_SPAN:
                timing = {"gen_ai.server.time_to_first_token": ttft} if ttft is not None else {}
                self.span.end(
                    span_name(self.operation, self.request_model, fields["http.method"]), now,
                    {**fields, **model_fields(models), **cost_fields(cost), **timing}, error=status >= 500,
                )
        if usage is not None and priced:  # charged through what admission held (nothing without budgets)
            self.reservation.settle(cost, usage.input + usage.output)
        self.reservation.release()
        if models is None or not 200 <= billed < 300:
            return
        metrics.record_llm_timing(
            route, models, duration,
            time_to_first_token=ttft,
            output_tokens=usage.output if usage is not None else 0, who=self.who,
        )
