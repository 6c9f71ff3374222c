"""
The budgets' metrics (where each budget stands, whether the ledger
answers), declared in the gateway's registry by L{GatewayMetrics}.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from agw.decisions import BudgetState
from agw.metering._children import MetricChildren

_LABELS = ("consumer", "budget", "unit")


class BudgetMetrics:
    """The budget collectors; see docs/metrics.md for each."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._child = MetricChildren()
        self.remaining = Gauge(
            "agw_budget_remaining",
            "What is left of each budget of each consumer in the current window (USD or tokens, by unit).",
            _LABELS, registry=registry,
            multiprocess_mode="livemin",  # with workers: the most spent any live worker knows of
        )
        self.limit = Gauge(
            "agw_budget_limit",
            "Each budget's limit per window (USD or tokens, by unit): remaining/limit is the share left.",
            _LABELS, registry=registry, multiprocess_mode="livemax",
        )
        # Declared with the first budgets: a gateway without any has no ledger to say is down.
        self.ledger_up: Gauge | None = None
        self.unwritten: Gauge | None = None

    def record_budget(self, state: BudgetState) -> None:
        labels = (state.consumer, state.budget.name, state.budget.unit.value)
        self._child(self.remaining, *labels).set(float(state.remaining))
        self._child(self.limit, *labels).set(float(state.budget.amount))

    def record_ledger(self, up: bool | None, unwritten: int) -> None:
        if self.ledger_up is None or self.unwritten is None:
            self.ledger_up = Gauge(
                "agw_budget_ledger_up",
                "1 while the budget ledger (config.database) answers, 0 while it does not (each process then enforces "
                "its share of what was left).",
                registry=self._registry, multiprocess_mode="livemin",  # with workers: 0 if any live worker cannot reach it
            )
            self.unwritten = Gauge(
                "agw_budget_unwritten_charges",
                "Budget charges (one per consumer, budget and window) waiting to be written to the ledger.",
                registry=self._registry, multiprocess_mode="livesum",
            )
        self.ledger_up.set(1 if up else 0)
        self.unwritten.set(unwritten)
