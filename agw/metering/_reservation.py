"""
What an admitted response holds of its consumer's budgets until its usage
is known (L{Reservation}), and how much one response is assumed to cost
before any has been seen (L{ReserveOptions}).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

from attrs import frozen

from agw.config import Budget, BudgetUnit
from agw.metering._catalog import Cost


class Holder(Protocol):
    """Who admitted a reservation (L{agw.metering.Governor})."""

    def release(self, reservation: Reservation) -> None: ...

    def charge(self, consumer: str | None, cost: Cost | None, tokens: int) -> None: ...


@frozen
class ReserveOptions:
    """
    What one response is assumed to cost until a larger one of the same
    consumer has been seen (each budget then holds the largest seen):
    C{tokens} for C{Tokens} budgets, C{usd} for C{USD} budgets.
    """

    tokens: int = 4096
    usd: Decimal = Decimal("0.10")

    def units(self, budget: Budget) -> int:
        if budget.unit is BudgetUnit.USD:
            return int(self.usd * Decimal(10) ** 12)
        return self.tokens


class Reservation:
    """
    One admitted response's hold on its consumer's budgets (C{holds}:
    budget name to units). L{settle} charges what it used and lets go;
    L{release} lets go without a charge (it never ran, or reported nothing).
    Either happens once.
    """

    def __init__(self, governor: Holder | None, consumer: str | None, holds: dict[str, int]) -> None:
        self._governor = governor
        self.consumer = consumer
        self.holds = holds
        self.open = governor is not None

    def settle(self, cost: Cost | None, tokens: int) -> None:
        """The response used C{cost} and C{tokens} (input plus output): charge them."""
        governor = self._governor
        self.release()
        if governor is not None:
            governor.charge(self.consumer, cost, tokens)

    def release(self) -> None:
        if self.open:
            self.open = False
            self._governor.release(self)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<Reservation {self.consumer!r} {self.holds!r}{'' if self.open else ' closed'}>"


class _NoReservation(Reservation):
    """A consumer without Block budgets: nothing held, nothing to charge through it."""

    def __init__(self) -> None:
        super().__init__(None, None, {})

    def settle(self, cost: Any, tokens: int) -> None:
        pass


NO_RESERVATION = _NoReservation()
