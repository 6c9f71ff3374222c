"""
How a L{agw.metering.Governor} keeps up with the ledger (L{LedgerReading}):
everyone's spend of the current windows read every second, and sooner near
a budget's end; each read re-bases this process's share; old windows pruned.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from agw.config import Budget
from agw.decisions import units_of
from agw.metering._ledger import BudgetLedger, Reading, WindowKey
from agw.metering._spendbook import SpendBook
from agw.metering._spool import ChargeSpool

# A process not seen for this many refresh intervals no longer shares the budgets.
ALIVE_INTERVALS = 10
# Within this many responses (times the processes sharing a budget) of its end, a
# process reads everyone's spend as it decides, at most every EARLY_READ seconds.
NEAR_END = 4
EARLY_READ = 0.025
PRUNE_EVERY = 3600.0  # seconds between prunes of the ledger
KEEP_WINDOWS_FOR = 7 * 86400  # past windows stay in the ledger this long after they end (history)




class LedgerReading:
    """Mixin: the reading half of a L{agw.metering.Governor} (which provides the attributes below)."""

    log: Logger
    _budgets: dict[str, tuple[Budget, ...]]
    _ledger: BudgetLedger
    _book: SpendBook
    _clock: Any
    _process: str | None
    _refresh_interval: float
    _created: bool
    _pruned_at: float | None
    _early_read_at: float
    _early_waiters: list[Deferred[None]] | None
    _base: dict[WindowKey, int]
    _replaying: bool
    sharers: int
    spool: ChargeSpool | None

    def _window(self, budget: Budget, now: float) -> tuple[int, int]:
        raise NotImplementedError

    @staticmethod
    def _window_start(seconds: int, now: float) -> int:
        raise NotImplementedError

    def _estimate(self, budget: Budget, key: WindowKey) -> int:
        raise NotImplementedError

    def _near_end(self, left: int, estimate: int) -> bool:
        raise NotImplementedError

    @inlineCallbacks
    def refresh(self) -> Any:
        """Read everyone's spend for the current windows (the first time, create the tables)."""
        if not self._budgets:
            return
        now = self._clock.seconds()
        if not self._created:
            try:
                yield self._ledger.start()
            except Exception:
                self._book.unreachable("creating its tables", Failure(), "retried every refresh")
                return
            self._created = True
        starts = {self._window(budget, now)[0] for budgets in self._budgets.values() for budget in budgets}
        live_since = int(now - ALIVE_INTERVALS * self._refresh_interval)
        reading: Reading | None = yield self._book.read(starts, self._process, int(now), live_since)
        if reading is not None:
            if self._process is not None:
                self.sharers = reading.sharers
            self._rebase()
            self._replay_spool(int(now))
        if reading is not None and (self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY):
            self._pruned_at = now
            self._ledger.prune(self._keep_from(now), int(now - KEEP_WINDOWS_FOR), int(now - 86400)).addErrback(
                lambda failure: self.log.warn("pruning the budget ledger failed: {error}", error=failure.getErrorMessage())
            )

    def _replay_spool(self, now: int) -> None:
        """Write what stopped processes kept on disk (they could not reach the ledger), once it answers."""
        if self.spool is None or self._replaying or not self.spool.files():
            return
        self._replaying = True

        def done(result: object) -> None:
            self._replaying = False
            if isinstance(result, Failure):
                self.log.warn("kept budget charges not written yet: {error}", error=result.getErrorMessage())

        self.spool.replay(self._ledger, now).addBoth(done)

    def _keep_from(self, now: float) -> list[tuple[str, int]]:
        longest: dict[str, int] = {}
        for budgets in self._budgets.values():
            for budget in budgets:
                longest[budget.name] = max(longest.get(budget.name, 0), budget.window_seconds)
        return [(name, self._window_start(seconds, now) - seconds - KEEP_WINDOWS_FOR) for name, seconds in longest.items()]

    def _read_soon(self) -> Deferred[None]:
        """
        Read everyone's spend now rather than at the next tick; fires when
        read (or failed). A read asked for within L{EARLY_READ} seconds of
        the last one joins it.
        """
        now = self._clock.seconds()
        if self._early_waiters is not None and now - self._early_read_at < EARLY_READ:  # type: ignore[operator]
            joined: Deferred[None] = Deferred()
            self._early_waiters.append(joined)
            return joined
        first: Deferred[None] = Deferred()
        # The caller waits before the read starts: a read that ends at once still fires it.
        self._early_read_at, waiters = now, [first]
        self._early_waiters = waiters

        def done(result: object) -> None:
            if self._early_waiters is waiters:
                self._early_waiters = None
            for waiter in waiters:
                waiter.callback(None)
            if isinstance(result, Failure):
                self.log.failure("reading budgets failed", result)

        self.refresh().addBoth(done)
        return first

    def fresh(self, consumer: str | None) -> Deferred[None]:
        """
        Fires at once, or, when C{consumer} is within a few responses of a
        C{Block} budget's end, once everyone's spend was read afresh: a
        handshake or an HTTP request there is decided on what all processes
        spent, not on a read up to a second old.
        """
        now = self._clock.seconds()
        for budget in self._budgets.get(consumer, ()) if consumer is not None else ():
            if not budget.block:
                continue
            key = (consumer, budget.name, self._window(budget, now)[0])
            if self._near_end(units_of(budget, budget.amount) - self._book.spent(key), self._estimate(budget, key)):
                return self._read_soon()
        return succeed(None)

    def _rebase(self) -> None:
        """Everyone's spend was just read: each budget's share starts from it."""
        now = self._clock.seconds()
        self._base = {
            key: self._book.spent(key)
            for consumer, budgets in self._budgets.items() for budget in budgets
            for key in [(consumer, budget.name, self._window(budget, now)[0])]
        }
