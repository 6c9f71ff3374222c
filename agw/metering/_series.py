"""
The metric children that one model's responses on one route for one
consumer record into (L{ModelSeries}): a response's tokens, their cost
and its duration are about a dozen observations, each of which would
otherwise build a label tuple of ten values and look its child up by it.
A series is made once per label set, which the values bound already
(model names, methods, configured routes and consumers).
"""

from __future__ import annotations

from typing import Any, Protocol

from agw.metering._attribution import Attribution
from agw.metering._catalog import Cost
from agw.metering._children import MetricChildren
from agw.metering._recent import RecentCosts

UNKNOWN_MODEL = "unknown"


class SeriesMetrics(Protocol):
    """The metrics a L{ModelSeries} records into (L{agw.metering.GatewayMetrics}')."""

    token_usage: Any
    tokens: Any
    cost: Any
    cost_lookups: Any
    cost_by_component: Any
    llm_request_duration: Any
    time_to_first_token: Any
    time_per_output_token: Any


class ModelSeries:
    """
    One model's series on one route for one consumer. C{common} is the
    gen_ai labels then the route's; C{who} the consumer and its extra labels.
    """

    __slots__ = ("_metrics", "_child", "common", "_who", "_usage", "_tokens", "_components", "_lookups", "_cost", "_timing")

    def __init__(self, metrics: SeriesMetrics, children: MetricChildren, common: tuple[str, ...], who: Attribution) -> None:
        self._metrics, self._child, self.common, self._who = metrics, children, common, who
        self._usage: dict[str, Any] = {}  # token type: the token_usage histogram's child
        self._tokens: dict[tuple[str, str], Any] = {}  # (token type, modality): the tokens counter's child
        self._components: dict[str, Any] = {}  # cost component: the cost_by_component counter's child
        self._lookups: dict[str, Any] = {}  # lookup status: the cost_lookups counter's child
        self._cost: Any = None
        self._timing: tuple[Any, Any, Any] | None = None

    def observe_tokens(self, token_type: str, total: int, by_modality: tuple[tuple[str, int], ...]) -> None:
        """C{total} tokens of C{token_type}: one histogram observation, and the counter by modality."""
        usage = self._usage.get(token_type)
        if usage is None:
            usage = self._usage[token_type] = self._child(self._metrics.token_usage, token_type, *self.common, *self._who.labels)
        usage.observe(total)
        # The provider's per-modality details should add up to the total;
        # whatever they leave unexplained is counted as "unknown" so that the
        # counter's sums always equal the histogram's.
        attributed = 0
        for modality, tokens in by_modality:
            if tokens:
                self._counter(token_type, modality).inc(tokens)
                attributed += tokens
        if total > attributed:
            self._counter(token_type, "unknown").inc(total - attributed)

    def _counter(self, token_type: str, modality: str) -> Any:
        key = (token_type, modality)
        counter = self._tokens.get(key)
        if counter is None:
            who = self._who
            counter = self._tokens[key] = self._child(
                self._metrics.tokens, token_type, modality, *self.common, who.consumer, *who.labels,
            )
        return counter

    def record_cost(self, cost: Cost, recent: RecentCosts, tokens: int = 0) -> None:
        """C{cost}: its lookup's status, the admin page's record and, when priced, its USD by component."""
        # common: operation, system, request model, response model, then the route.
        # A Missing lookup priced at the "*" fallback has components: they are counted as cost.
        common, who = self.common, self._who
        lookup = self._lookups.get(cost.status)
        if lookup is None:
            lookup = self._lookups[cost.status] = self._child(self._metrics.cost_lookups, cost.status, *common[1:4])
        lookup.inc()
        total = cost.total
        recent.add(who.consumer, common[3] if common[3] != UNKNOWN_MODEL else common[2], total, tokens)
        if not cost.components:
            return
        if self._cost is None:
            self._cost = self._child(self._metrics.cost, *common, *who.labels)
        self._cost.inc(float(total))
        for component, usd in cost.components.items():
            self._component(component).inc(float(usd))

    def _component(self, component: str) -> Any:
        child = self._components.get(component)
        if child is None:
            who = self._who
            child = self._components[component] = self._child(
                self._metrics.cost_by_component, component, *self.common, who.consumer, *who.labels,
            )
        return child

    def record_timing(self, seconds: float, time_to_first_token: float | None, output_tokens: int) -> None:
        """An LLM request's duration and, when streamed, its token timing."""
        if self._timing is None:
            metrics, common = self._metrics, self.common
            self._timing = (
                self._child(metrics.llm_request_duration, *common),
                self._child(metrics.time_to_first_token, *common),
                self._child(metrics.time_per_output_token, *common),
            )
        duration, first_token, per_token = self._timing
        duration.observe(seconds)
        if time_to_first_token is not None:
            first_token.observe(time_to_first_token)
            if output_tokens > 1:
                per_token.observe((seconds - time_to_first_token) / (output_tokens - 1))

