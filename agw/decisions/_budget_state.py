"""
Where one budget of one consumer stands (L{BudgetState}), and the whole
units budgets are kept in (tokens, or USD in pico-dollars).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from attrs import frozen

from agw.config import Budget, BudgetUnit

PICO = Decimal(10) ** 12  # USD spend is kept in whole pico-dollars


@frozen
class BudgetState:
    """Where one budget of one consumer stands now (C{limit}: what is enforced, less while the ledger is down)."""

    consumer: str
    budget: Budget
    spent: Decimal  # USD or tokens
    window_start: int
    window_end: int
    limit: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limit - self.spent)

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.limit

    def as_json(self, now: float) -> dict[str, Any]:
        """The read-out of this budget (never the key)."""
        out = {
            "name": self.budget.name, "unit": self.budget.unit.value, "limit": float(self.budget.amount),
            "spent": float(self.spent), "remaining": float(self.remaining),
            "onBudgetExceeded": "Block" if self.budget.block else "Audit",
            "window_seconds": self.budget.window_seconds, "reset_seconds": round(self.window_end - now, 3),
        }
        if self.limit != self.budget.amount:
            out["enforced_limit"] = float(self.limit)  # the ledger is unreachable: this process's share
        return out


def units_of(budget: Budget, amount: Decimal) -> int:
    """C{amount} of C{budget}'s unit as the ledger keeps it (tokens, or pico-dollars)."""
    return int((amount * PICO).to_integral_value()) if budget.unit is BudgetUnit.USD else int(amount)


def amount_of(budget: Budget, units: int) -> Decimal:
    """The ledger's C{units} in C{budget}'s unit (tokens, or USD)."""
    return Decimal(units) / PICO if budget.unit is BudgetUnit.USD else Decimal(units)
