"""
The gateway's metrics: one L{CollectorRegistry} per gateway, and the only
module that knows metric names. Names and labels of the C{agentgateway_*}
metrics match agentgateway's so that existing dashboards keep working.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Histogram

from agw.metering._attribution import Attribution
from agw.metering._budget_metrics import BudgetMetrics
from agw.metering._call_metrics import CallMetrics
from agw.decisions import BudgetState
from agw.metering._catalog import DEFAULT_CATALOG, Catalog, Cost, default_catalog
from agw.metering._children import MetricChildren
from agw.metering._pricing import price_audio, price_tokens
from agw.metering._recent import RecentCosts
from agw.metering._series import UNKNOWN_MODEL, ModelSeries
from agw.metering._realtime_metrics import RealtimeMetrics
from agw.metering._usage import AudioDuration, TokenUsage

SYSTEM = "openai"
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67108864
DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(14))  # 0.01 ... 81.92 s
# Where a model name would add one series too many (or is too long to be one).
OTHER_MODEL = "other"
MAX_MODEL_LABEL_LENGTH = 128
# RFC 9110's methods and PATCH: the values of the "method" label.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
# Series of requests by (route, method as sent, status) kept: a client may send any method.
_MAX_REQUEST_SERIES = 4096

_ROUTE_LABELS = ("bind", "gateway", "listener", "route", "route_rule")
_GEN_AI_LABELS = ("gen_ai_operation_name", "gen_ai_system", "gen_ai_request_model", "gen_ai_response_model")
# agw's own metrics also say whose tokens they are: the apiKey's metadata.name
# ("" for anonymous callers); bounded by the configured keys.
_CONSUMER = ("consumer",)


@frozen
class RouteLabels:
    """Where a request was routed: agentgateway's route labels."""

    bind: str
    gateway: str
    listener: str
    route: str
    route_rule: str = ""

    @classmethod
    def of(cls, port: int, listener: str, route: str) -> RouteLabels:
        """Labels for a route of the listener on bind C{port}."""
        return cls(bind=str(port), gateway=f"bind/{port}", listener=listener, route=route)

    def values(self) -> tuple[str, ...]:
        return (self.bind, self.gateway, self.listener, self.route, self.route_rule)


@frozen
class ModelLabels:
    """What was asked for and what answered."""

    operation: str
    request_model: str | None
    response_model: str | None

    @property
    def priced_model(self) -> str | None:
        """The model a price is looked up for: the one that answered, else the one asked for."""
        return self.response_model or self.request_model

    def values(self) -> tuple[str, ...]:
        return (
            self.operation,
            SYSTEM,
            self.request_model or UNKNOWN_MODEL,
            self.response_model or UNKNOWN_MODEL,
        )


class GatewayMetrics:
    """
    The metrics of one gateway, in its own registry (never the process-global
    one: tests and embedders build several gateways in one process).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, max_model_labels: int = 200,
        catalog: Catalog | None | object = DEFAULT_CATALOG, extra_labels: tuple[str, ...] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._child = MetricChildren()
        self._series: dict[tuple[tuple[str, ...], RouteLabels, str, tuple[str, ...]], ModelSeries] = {}
        self._requests: dict[tuple[RouteLabels, bytes | str, int], tuple[Any, Any]] = {}
        # config.metrics.fields.add: labels from the client key's metadata (see Attributor).
        self.extra_labels = extra_labels
        self.anonymous = Attribution(labels=tuple("" for _ in extra_labels))
        who = _CONSUMER + extra_labels
        # Prices (None: no catalog, every lookup NoCatalog); agw's shipped one unless told otherwise.
        self.catalog: Catalog | None = default_catalog() if catalog is DEFAULT_CATALOG else catalog  # type: ignore[assignment]
        # Request models come from clients (a body, a ?model=): each distinct
        # one would be a new series in every gen_ai metric. Past this many
        # distinct names (per label), a new name is counted as "other".
        self.max_model_labels = max_model_labels
        self._seen_models: tuple[set[str], set[str]] = (set(), set())
        self.recent = RecentCosts()  # the last records priced, for the admin page (agw.serve)
        self.token_usage = Histogram(
            "agentgateway_gen_ai_client_token_usage",
            "Number of tokens used per request, by token type (agentgateway-compatible).",
            ("gen_ai_token_type",) + _GEN_AI_LABELS + _ROUTE_LABELS + extra_labels,
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "agw_gen_ai_tokens",
            "Tokens used, by token type and modality; sums by type equal the token usage histogram's.",
            ("gen_ai_token_type", "gen_ai_token_modality") + _GEN_AI_LABELS + _ROUTE_LABELS + who,
            registry=self.registry,
        )
        self.cost = Counter(
            "agentgateway_gen_ai_client_cost_usd",
            "Cumulative USD cost of generative AI requests, from the model cost catalog (agentgateway-compatible).",
            _GEN_AI_LABELS + _ROUTE_LABELS + extra_labels,
            registry=self.registry,
        )
        self.budgets = BudgetMetrics(self.registry)
        self.cost_lookups = Counter(
            "agentgateway_cost_catalog_lookups",
            "Model cost catalog lookups by status: Exact, Unpriced, Missing, NoCatalog (agentgateway-compatible).",
            ("status", "gen_ai_system", "gen_ai_request_model", "gen_ai_response_model"),
            registry=self.registry,
        )
        self.cost_by_component = Counter(
            "agw_gen_ai_cost_usd",
            "USD cost by component (input, cache_read, input_audio, output_audio, ...) and consumer.",
            ("component",) + _GEN_AI_LABELS + _ROUTE_LABELS + who,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "agw_gen_ai_audio_seconds",
            "Audio billed by duration (transcription with usage.type=duration).",
            _GEN_AI_LABELS + _ROUTE_LABELS + who,
            registry=self.registry,
        )
        self.requests = Counter(
            "agentgateway_requests",
            "HTTP requests, by method and status.",
            _ROUTE_LABELS + ("method", "status"),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "agentgateway_request_duration_seconds",
            "HTTP request duration, by method and status.",
            _ROUTE_LABELS + ("method", "status"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.llm_request_duration = Histogram(
            "agentgateway_gen_ai_server_request_duration",
            "LLM request duration in seconds (agentgateway-compatible).",
            _GEN_AI_LABELS + _ROUTE_LABELS,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "agentgateway_gen_ai_server_time_to_first_token",
            "Seconds from request to the first streamed token (agentgateway-compatible).",
            _GEN_AI_LABELS + _ROUTE_LABELS,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "agentgateway_gen_ai_server_time_per_output_token",
            "Seconds per output token after the first (agentgateway-compatible).",
            _GEN_AI_LABELS + _ROUTE_LABELS,
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
            registry=self.registry,
        )
        self.realtime = RealtimeMetrics.declare(self.registry, _ROUTE_LABELS, who)
        self.calls = CallMetrics.declare(self.registry, _ROUTE_LABELS, who)
        self.guardrail_checks = Counter(
            "agentgateway_guardrail_checks",
            "Guardrail checks by phase (request, response) and action: allow, mask, reject, failOpen (agentgateway's, with route labels and consumer).",
            ("phase", "action") + _ROUTE_LABELS + who,
            registry=self.registry,
        )

    def model_values(self, models: ModelLabels) -> tuple[str, ...]:
        """C{models}' label values, with model names bounded (see C{max_model_labels})."""
        operation, system, request_model, response_model = models.values()
        return (operation, system, self._bounded(0, request_model), self._bounded(1, response_model))

    def _bounded(self, which: int, model: str) -> str:
        seen = self._seen_models[which]
        if model in seen:
            return model
        if len(model) > MAX_MODEL_LABEL_LENGTH or len(seen) >= self.max_model_labels:
            return OTHER_MODEL
        seen.add(model)
        return model

    def prices(self, model: str | None) -> bool:
        """
        Whether the current catalog prices C{model} (an entry, or the
        provider's C{"*"} fallback) as L{record_tokens} would look it up.
        """
        return self.catalog is not None and self.catalog.has_price(SYSTEM, model)

    def record_tokens(
        self, route: RouteLabels, models: ModelLabels, usage: TokenUsage, who: Attribution | None = None,
    ) -> Cost:
        """Record one response's usage (for C{who}): one observation per token type, and its cost."""
        series = self.series(route, models, who or self.anonymous)
        series.observe_tokens("input", usage.input, usage.input_by_modality)
        series.observe_tokens("output", usage.output, usage.output_by_modality)
        if usage.cached_input is not None:
            series.observe_tokens("input_cache_read", usage.cached_input, usage.cached_by_modality)
        cost = price_tokens(self.catalog, SYSTEM, models.priced_model, usage)
        series.record_cost(cost, self.recent, usage.input + usage.output)
        return cost

    def series(self, route: RouteLabels, models: ModelLabels, who: Attribution) -> ModelSeries:
        """The children C{who}'s responses of C{models} on C{route} record into (made once)."""
        values = self.model_values(models)
        key = (values, route, who.consumer, who.labels)  # not who: its log fields are a dict
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ModelSeries(self, self._child, values + route.values(), who)
        return series

    def record_ledger(self, up: bool | None, unwritten: int) -> None:
        """Whether the budget ledger answers, and how many charges wait to be written (see L{agw.metering.Governor})."""
        self.budgets.record_ledger(up, unwritten)

    def record_budget(self, state: BudgetState) -> None:
        """A budget's spend changed (see L{agw.metering.Governor})."""
        self.budgets.record_budget(state)

    def record_request(self, route: RouteLabels, method: bytes | str, status: int, seconds: float) -> None:
        """Record one finished HTTP request."""
        key = (route, method, status)
        children = self._requests.get(key)
        if children is None:
            labels = self._request_labels(route, method, status)
            children = (self._child(self.requests, *labels), self._child(self.request_duration, *labels))
            if len(self._requests) < _MAX_REQUEST_SERIES:  # methods are the client's: past this, looked up each time
                self._requests[key] = children
        children[0].inc()
        children[1].observe(seconds)

    @staticmethod
    def _request_labels(route: RouteLabels, method: bytes | str, status: int) -> tuple[str, ...]:
        method_text = method.decode("ascii", "replace") if isinstance(method, bytes) else method
        # A client may invent any number of methods; as OpenTelemetry's
        # http.request.method does, those are one "_OTHER" series.
        return route.values() + (method_text if method_text in _HTTP_METHODS else "_OTHER", str(status))

    def record_refusal(self, route: RouteLabels, method: bytes | str, status: int) -> None:
        """
        Count one request agw refused before any route's forwarder (no
        route, a bad target, a body over a limit, an unparsable request): in
        the requests counter only, its duration being no one's.
        """
        self._child(self.requests, *self._request_labels(route, method, status)).inc()

    def record_llm_timing(
        self,
        route: RouteLabels,
        models: ModelLabels,
        seconds: float,
        time_to_first_token: float | None = None,
        output_tokens: int = 0,
        who: Attribution | None = None,
    ) -> None:
        """Record an LLM request's duration and, when streamed, its token timing (its series: C{who}'s, as its tokens')."""
        self.series(route, models, who or self.anonymous).record_timing(seconds, time_to_first_token, output_tokens)

    def record_audio(
        self, route: RouteLabels, models: ModelLabels, duration: AudioDuration, who: Attribution | None = None,
    ) -> Cost:
        """Record transcription billed by time, and its cost."""
        who = who or self.anonymous
        series = self.series(route, models, who)
        self._child(self.audio_seconds, *series.common, who.consumer, *who.labels).inc(duration.seconds)
        cost = price_audio(self.catalog, SYSTEM, models.priced_model, duration)
        series.record_cost(cost, self.recent)
        return cost

    def record_guardrail(self, route: RouteLabels, phase: str, action: str, who: Attribution | None = None) -> None:
        """Count one guard that ran (C{phase} request or response) by what it did (allow, mask, reject, failOpen)."""
        who = who or self.anonymous
        self._child(self.guardrail_checks, phase, action, *route.values(), who.consumer, *who.labels).inc()

    def session_labels(self, route: RouteLabels, who: Attribution | None = None) -> tuple[str, ...]:
        """The label values of the Realtime session metrics for a session of C{who}."""
        who = who or self.anonymous
        return (*route.values(), who.consumer, *who.labels)
