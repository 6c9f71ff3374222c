"""
Budgets of client keys (agentgateway's C{keys[].budgets}), kept in a
L{BudgetLedger} and decided on without waiting for it.

A decision reads the spend this process knows (L{SpendBook}): the ledger's
totals, refreshed every C{refresh_interval} seconds, plus this process's
own charges. Responses in flight count too: each admitted response holds a
L{Reservation} (what one response of the consumer may cost) until its usage
is charged, and when what is left cannot cover one more, a consumer gets
one response in flight at a time. With several processes on one ledger each
may spend only its share of what was left at its last read (C{remaining /
processes}), the same rule that holds while the ledger is unreachable. See
docs/governance.md for the bounds measured.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from agw.config import Budget, BudgetUnit, ClientKey
from agw.decisions import BudgetState, amount_of, units_of
from agw.metering._catalog import Cost
from agw.decisions import Denial
from agw.metering._ledger import BudgetLedger, WindowKey
from agw.metering._ledger_reading import NEAR_END, LedgerReading
from agw.metering._reservation import Reservation, ReserveOptions
from agw.metering._spendbook import SpendBook
from agw.metering._spool import ChargeSpool


class Governor(LedgerReading):
    """The budgets of every consumer of a gateway, and their spend."""

    log = Logger()

    def __init__(
        self, keys: Iterable[ClientKey], ledger: BudgetLedger, clock: Any, refresh_interval: float = 1.0,
        on_change: Any = None, on_ledger: Any = None, enforcing: bool = True, reserve: ReserveOptions = ReserveOptions(),
        spool: ChargeSpool | None = None,
    ) -> None:
        self._budgets: dict[str, tuple[Budget, ...]] = {}
        self.configure(keys)
        self._ledger = ledger
        self._clock = clock
        self._on_change = on_change  # called with each BudgetState that changed (metrics)
        self._on_ledger = on_ledger  # called with (ledger up or not, charges unwritten)
        self._book = SpendBook(ledger, clock, self._changed, self._ledger_changed)
        # Only processes that enforce say they share the budgets (a --workers parent only reads them).
        self._process = uuid.uuid4().hex if enforcing else None
        self.sharers = 1
        self.reserve = reserve
        self.spool = spool  # where charges unwritten at stop are kept, and replayed from
        self._replaying = False
        self._refreshing = LoopingCall(self.refresh)
        self._refreshing.clock = clock
        self._refresh_interval = refresh_interval
        self._created = False
        self._pruned_at: float | None = None
        self._early_read_at = 0.0
        self._early_waiters: list[Deferred[None]] | None = None  # callers of the read under way
        self._base: dict[WindowKey, int] = {}  # spend known at the last read (each process's share starts there)
        self._held: dict[tuple[str, str], list[int]] = {}  # (consumer, budget) -> [units held, reservations]
        self._largest: dict[tuple[str, str], int] = {}  # the most one response of the consumer cost, per budget

    def configure(self, keys: Iterable[ClientKey]) -> None:
        """Use C{keys}' budgets from now on (a reload with the same database keeps the spend and the holds)."""
        budgets: dict[str, tuple[Budget, ...]] = {}
        for key in keys:
            if key.budgets and key.name is not None:
                budgets.setdefault(key.name, key.budgets)  # the config refuses one name with different budgets
        self._budgets = budgets

    @property
    def consumers(self) -> list[str]:
        return sorted(self._budgets)

    @property
    def ledger_up(self) -> bool | None:
        """Whether the ledger answered last time (C{None}: not asked yet)."""
        return self._book.up

    @property
    def ready(self) -> bool:
        """Whether the ledger was read since this process started (before, Block budgets refuse)."""
        return self._book.read_once or not self._budgets

    @property
    def unwritten(self) -> int:
        return self._book.unwritten

    def start(self) -> Deferred[None]:
        """
        Read the spend now (creating the ledger's tables first) and every
        C{refresh_interval} from then on, whether or not the ledger answers:
        fires after the first attempt.
        """
        if not self._budgets or self._refreshing.running:
            return succeed(None)
        first = self.refresh()

        def keep_reading(_: object) -> None:
            if not self._refreshing.running:
                looping = self._refreshing.start(self._refresh_interval, now=False)
                looping.addErrback(lambda failure: self.log.failure("reading budgets stopped", failure))

        return first.addBoth(keep_reading)

    @inlineCallbacks
    def stop(self) -> Any:
        """Write what is not written yet (a few tries, each bounded), stop reading, leave, close the ledger."""
        if self._refreshing.running:
            self._refreshing.stop()
        for _ in range(1 if self._book.up is False else 3):  # each try is bounded by the ledger's timeouts
            if not self._book.unwritten:
                break
            yield self._book.flush()
        self._book.stop()
        if self._book.unwritten:
            amounts = {f"{c}/{b}@{w}": amount for (c, b, w), amount in self._book.unwritten_amounts().items()}
            path = self.spool.keep(self._book.take_unwritten()) if self.spool is not None else None
            if path is not None:
                self.log.warn("budget ledger unreachable at stop: charges kept in {path}, written at the next start: "
                              "{charges}", path=path, charges=amounts)
            else:
                self.log.error("budget charges lost at stop: the ledger did not take them: {charges}", charges=amounts)
        if self._process is not None and self._book.up:
            try:
                yield self._ledger.leave(self._process)
            except Exception:
                pass  # it will age out
        self._ledger.close()

    def retire(self) -> None:
        """A reload replaced this governor (another database): stop reading; charges of old sessions are still written."""
        if self._refreshing.running:
            self._refreshing.stop()

    def states(self, consumer: str | None) -> list[BudgetState]:
        """Where each budget of C{consumer} stands now (none for anonymous or budget-less consumers)."""
        if consumer is None:
            return []
        now = self._clock.seconds()
        return [self._state(consumer, budget, now) for budget in self._budgets.get(consumer, ())]

    def blocking(self, consumer: str | None, priced: bool = True, model: str | None = None) -> Denial | None:
        """Why C{consumer} may start nothing now (an exhausted C{Block} budget, ...), if so; holds nothing."""
        return self._decide(consumer, priced, model, hold=False)[1]

    def admit(
        self, consumer: str | None, priced: bool = True, model: str | None = None, started: bool = False,
    ) -> Reservation | Denial:
        """
        Admit one response (or request) of C{consumer} using a model that is
        C{priced} or not: a L{Reservation} to settle with its usage, or why
        not. C{started}: the provider started it on its own, and only a final
        refusal stops it (cancelling it loses the user's turn and is still
        billed for its input, so waiting for others is not worth it).
        """
        reservation, denial = self._decide(consumer, priced, model, hold=True, started=started)
        return denial if denial is not None else reservation  # type: ignore[return-value]

    def _decide(
        self, consumer: str | None, priced: bool, model: str | None, hold: bool, started: bool = False,
    ) -> tuple[Reservation | None, Denial | None]:
        budgets = self._budgets.get(consumer, ()) if consumer is not None else ()
        blocking = [budget for budget in budgets if budget.block]
        if not blocking:  # Audit budgets (or none): nothing to hold, usage still charged through the reservation
            return (Reservation(self, consumer, {}) if hold else None), None
        if not self._book.read_once:
            return None, Denial.ledger_unread()
        now = self._clock.seconds()
        holds: dict[str, int] = {}
        for budget in blocking:
            if budget.unit is BudgetUnit.USD and not priced:
                return None, Denial.unpriced(model, budget.name)
            key = (consumer, budget.name, self._window(budget, now)[0])
            spent, limit = self._book.spent(key), units_of(budget, budget.amount)
            if spent >= limit:
                return None, Denial.exhausted(self._state(consumer, budget, now))  # type: ignore[arg-type]
            estimate = self._estimate(budget, key)
            if self._near_end(limit - spent, estimate):
                self._read_soon()  # near the end, others' spend is read within EARLY_READ, not a whole interval
            if not hold:
                continue  # a handshake: nothing starts yet
            holds[budget.name] = estimate
            allowance, down = self._allowance(budget, key), self._book.up is False
            if started and not (down and spent >= allowance):
                continue  # (while the ledger is down no read will give this process more: then its share is final)
            if spent >= allowance:
                return None, Denial.share_used(self._state(consumer, budget, now), self.sharers, down)  # type: ignore[arg-type]
            held, count = self._held.get((consumer, budget.name), (0, 0))  # type: ignore[arg-type]
            if count and held + estimate > allowance - spent:
                return None, Denial.in_flight(self._state(consumer, budget, now), count)  # type: ignore[arg-type]
        if not hold:
            return None, None
        for name, units in holds.items():
            entry = self._held.setdefault((consumer, name), [0, 0])  # type: ignore[arg-type]
            entry[0] += units
            entry[1] += 1
        return Reservation(self, consumer, holds), None  # type: ignore[arg-type]

    def release(self, reservation: Reservation) -> None:
        """C{reservation}'s response is over (or never started): let go of what it held."""
        for name, units in reservation.holds.items():
            entry = self._held.get((reservation.consumer, name))
            if entry is not None:
                entry[0] -= units
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._held[(reservation.consumer, name)]

    def charge(self, consumer: str | None, cost: Cost | None, tokens: int) -> None:
        """Charge what one response used (its cost, its input plus output tokens) to C{consumer}'s budgets."""
        if consumer is None or consumer not in self._budgets:
            return
        now = self._clock.seconds()
        for budget in self._budgets[consumer]:
            if budget.unit is BudgetUnit.USD:
                amount = units_of(budget, cost.total) if cost is not None else 0
            else:
                amount = tokens
            if amount <= 0:
                continue
            if amount > self._largest.get((consumer, budget.name), 0):
                self._largest[(consumer, budget.name)] = amount  # what the next reservations hold
            key = (consumer, budget.name, self._window(budget, now)[0])
            self._book.add(key, amount)
            if self._near_end(units_of(budget, budget.amount) - self._book.spent(key), self._estimate(budget, key)):
                self._book.flush()  # near the end, others must see it now, not after the batch delay

    def flush(self) -> Deferred[None]:
        """Write the charges made so far now."""
        return self._book.flush()

    def _allowance(self, budget: Budget, key: WindowKey) -> int:
        """
        What this process may let C{key}'s spend reach before it reads
        everyone's again: its share of what was left at the last read (all of
        it when it is alone). Others' spend since then is unseen, so the
        processes together stay within what was left (see docs/governance.md).
        """
        limit = units_of(budget, budget.amount)
        if self.sharers <= 1:
            return limit
        base = min(self._base.get(key, 0), limit)
        return base + (limit - base) // self.sharers

    def _estimate(self, budget: Budget, key: WindowKey) -> int:
        """What one response of C{key}'s consumer may cost: the configured reserve, or the most one has cost."""
        return max(self.reserve.units(budget), self._largest.get(key[:2], 0))  # type: ignore[arg-type]

    def _near_end(self, left: int, estimate: int) -> bool:
        """Whether C{left} units of a budget are within a few responses (of C{estimate} each) of its end."""
        return left < NEAR_END * estimate * max(1, self.sharers)

    def _ledger_changed(self) -> None:
        if self._on_ledger is not None:
            self._on_ledger(self._book.up, self._book.unwritten)
        for consumer in self._budgets:  # enforced limits changed
            for state in self.states(consumer):
                self._report(state)

    def _changed(self, key: WindowKey) -> None:
        consumer, name, _ = key
        now = self._clock.seconds()
        for budget in self._budgets.get(consumer, ()):
            if budget.name == name:
                self._report(self._state(consumer, budget, now))
        if self._on_ledger is not None:
            self._on_ledger(self._book.up, self._book.unwritten)

    def _report(self, state: BudgetState) -> None:
        if self._on_change is not None:
            self._on_change(state)

    def _state(self, consumer: str, budget: Budget, now: float) -> BudgetState:
        start, end = self._window(budget, now)
        key = (consumer, budget.name, start)
        # While the ledger is down the read-out shows what this process enforces (its share).
        limit = self._allowance(budget, key) if self._book.up is False else units_of(budget, budget.amount)
        return BudgetState(consumer, budget, amount_of(budget, self._book.spent(key)), start, end, amount_of(budget, limit))

    @classmethod
    def _window(cls, budget: Budget, now: float) -> tuple[int, int]:
        start = cls._window_start(budget.window_seconds, now)
        return start, start + budget.window_seconds

    @staticmethod
    def _window_start(seconds: int, now: float) -> int:
        # Fixed windows aligned to the Unix epoch, as agentgateway's.
        return int(now) - int(now) % seconds
