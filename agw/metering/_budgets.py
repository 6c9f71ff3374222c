"""
Budgets of client keys (agentgateway's C{keys[].budgets}), kept in a
L{BudgetLedger} and decided on without waiting for it.

Every decision (may this consumer start a response?) reads the spend known
here: the total the database returned for this process's last charge, or
the latest read of everyone's (refreshed every C{refresh_interval}
seconds), whichever is newer. A response in flight is never cut: budgets
are charged with each response's usage as it arrives, so a window can end
a little over its limit, never under-counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from agw.config import Budget, BudgetUnit, ClientKey
from agw.metering._catalog import Cost
from agw.metering._ledger import BudgetLedger, WindowKey

PICO = Decimal(10) ** 12  # USD spend is kept in whole pico-dollars


@frozen
class BudgetState:
    """Where one budget of one consumer stands now."""

    consumer: str
    budget: Budget
    spent: Decimal  # USD or tokens
    window_start: int
    window_end: int

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.budget.amount - self.spent)

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.budget.amount

    def as_json(self, now: float) -> dict[str, Any]:
        """The read-out of this budget (never the key)."""
        return {
            "name": self.budget.name, "unit": self.budget.unit.value, "limit": float(self.budget.amount),
            "spent": float(self.spent), "remaining": float(self.remaining),
            "onBudgetExceeded": "Block" if self.budget.block else "Audit",
            "window_seconds": self.budget.window_seconds, "reset_seconds": round(self.window_end - now, 3),
        }


class Governor:
    """The budgets of every consumer of a gateway, and their spend."""

    log = Logger()

    def __init__(
        self, keys: Iterable[ClientKey], ledger: BudgetLedger, clock: Any, refresh_interval: float = 1.0,
        on_change: Any = None,
    ) -> None:
        self._budgets: dict[str, tuple[Budget, ...]] = {}
        for key in keys:
            if key.budgets and key.name is not None:
                self._budgets.setdefault(key.name, key.budgets)  # a consumer listed on several routes: first wins
        self._ledger = ledger
        self._clock = clock
        self._spent: dict[WindowKey, int] = {}
        self._on_change = on_change  # called with each BudgetState that changed (metrics)
        self._refreshing = LoopingCall(self.refresh)
        self._refreshing.clock = clock
        self._refresh_interval = refresh_interval
        # Charges not yet written, per window: written together every flush_interval
        # (one upsert per window, not one per response).
        self._unwritten: dict[WindowKey, int] = {}
        self._flush_call: Any = None
        self.flush_interval = 0.05

    @property
    def consumers(self) -> list[str]:
        return sorted(self._budgets)

    def start(self) -> Deferred[None]:
        """Create the ledger's table, read the spend, and keep reading it."""
        if not self._budgets:
            return succeed(None)
        started = self._ledger.start()
        started.addCallback(lambda _: self._refreshing.start(self._refresh_interval, now=True) and None)
        return started

    def stop(self) -> None:
        """Write what is not written yet, stop reading, and close the ledger (its queued writes finish first)."""
        self.flush()
        if self._refreshing.running:
            self._refreshing.stop()
        self._ledger.close()

    def refresh(self) -> Deferred[None]:
        """Read everyone's spend for the current windows."""
        if not self._budgets:
            return succeed(None)
        now = self._clock.seconds()
        since = min(self._window(budget, now)[0] for budgets in self._budgets.values() for budget in budgets)
        reading = self._ledger.totals(since)

        def read(totals: dict[WindowKey, int]) -> None:
            for key, total in totals.items():
                self._update(key, total)

        def failed(failure: Any) -> None:
            self.log.warn("reading budget spend failed: {error}", error=failure.getErrorMessage())

        return reading.addCallbacks(read, failed)

    def states(self, consumer: str | None) -> list[BudgetState]:
        """Where each budget of C{consumer} stands now (none for anonymous or budget-less consumers)."""
        if consumer is None:
            return []
        now = self._clock.seconds()
        return [self._state(consumer, budget, now) for budget in self._budgets.get(consumer, ())]

    def blocking(self, consumer: str | None) -> BudgetState | None:
        """The first exhausted C{Block} budget of C{consumer}, if any: no new response may start."""
        return next((state for state in self.states(consumer) if state.budget.block and state.exceeded), None)

    def charge(self, consumer: str | None, cost: Cost | None, tokens: int) -> None:
        """Charge what one response used (its cost, its input plus output tokens) to C{consumer}'s budgets."""
        if consumer is None or consumer not in self._budgets:
            return
        now = self._clock.seconds()
        for budget in self._budgets[consumer]:
            if budget.unit is BudgetUnit.USD:
                amount = int((cost.total * PICO).to_integral_value()) if cost is not None else 0
            else:
                amount = tokens
            if amount <= 0:
                continue
            key = (consumer, budget.name, self._window(budget, now)[0])
            self._update(key, self._spent.get(key, 0) + amount)  # decisions see it at once
            self._unwritten[key] = self._unwritten.get(key, 0) + amount
        if self._unwritten and self._flush_call is None:
            self._flush_call = self._clock.callLater(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Write the charges made since the last flush."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        unwritten, self._unwritten = self._unwritten, {}
        for key, amount in unwritten.items():
            charging = self._ledger.charge(key, amount)
            charging.addCallbacks(
                lambda total, key=key: self._update(key, total),
                lambda failure: self.log.error("charging a budget failed: {error}", error=failure.getErrorMessage()),
            )

    def _update(self, key: WindowKey, total: int) -> None:
        if total < self._spent.get(key, 0) and key in self._spent:
            # A read that started before one of our charges committed: the charge's own total will come.
            return
        self._spent[key] = total
        consumer, name, _ = key
        if self._on_change is not None:
            for budget in self._budgets.get(consumer, ()):
                if budget.name == name:
                    self._on_change(self._state(consumer, budget, self._clock.seconds()))

    def _state(self, consumer: str, budget: Budget, now: float) -> BudgetState:
        start, end = self._window(budget, now)
        units = self._spent.get((consumer, budget.name, start), 0)
        spent = Decimal(units) / PICO if budget.unit is BudgetUnit.USD else Decimal(units)
        return BudgetState(consumer, budget, spent, start, end)

    @staticmethod
    def _window(budget: Budget, now: float) -> tuple[int, int]:
        # Fixed windows aligned to the Unix epoch, as agentgateway's.
        start = int(now) - int(now) % budget.window_seconds
        return start, start + budget.window_seconds
