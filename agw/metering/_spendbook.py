"""
What one process knows of budget spend (L{SpendBook}): the ledger's totals
as last read or returned, plus this process's own charges that are not
written yet. Charges are never lost: they wait in order and are retried,
with the same ids (so never added twice), until the ledger takes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from agw.metering._ledger import BudgetLedger, Charge, Reading, WindowKey

# Seconds before a failed write is tried again: doubling from the first to the last.
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
# A write carries at most this many charges (one per window key), so a long outage's backlog goes in pieces.
MAX_BATCH = 500


class SpendBook:
    """
    The spend this process knows of, per window key. C{on_total(key)} is
    called when a key's known spend changed; C{on_ledger()} when the ledger
    became reachable or unreachable.
    """

    log = Logger()

    def __init__(
        self, ledger: BudgetLedger, clock: Any, on_total: Callable[[WindowKey], None], on_ledger: Callable[[], None],
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._on_total = on_total
        self._on_ledger = on_ledger
        self._known: dict[WindowKey, int] = {}  # the ledger's totals, everyone's charges
        self._queued: dict[WindowKey, int] = {}  # charges not sent yet (merged per key)
        self._sending: tuple[Charge, ...] = ()  # the batch being written, or to be tried again with the same ids
        self._sent_amounts: dict[WindowKey, int] = {}
        # Bumped when a charge of the key is sent and when it is answered: a read that saw
        # the key change meanwhile may predate one of our charges (see read).
        self._epoch: dict[WindowKey, int] = {}
        self._write_call: Any = None
        self._retries = 0
        self._writing: Deferred[None] | None = None
        self.batch_delay = 0.05  # charges of this long are written together
        self.up: bool | None = None  # None: not reached yet
        self.read_once = False

    def spent(self, key: WindowKey) -> int:
        """Everyone's spend as last known, plus ours not yet written."""
        return self._known.get(key, 0) + self._queued.get(key, 0) + self._sent_amounts.get(key, 0)

    @property
    def unwritten(self) -> int:
        """How many charges (one per window key) wait to be written."""
        return len(self._queued.keys() | self._sent_amounts.keys())

    def unwritten_amounts(self) -> dict[WindowKey, int]:
        """What waits to be written, per key."""
        amounts = dict(self._sent_amounts)
        for key, amount in self._queued.items():
            amounts[key] = amounts.get(key, 0) + amount
        return amounts

    def add(self, key: WindowKey, amount: int) -> None:
        """Charge C{amount} to C{key}: decisions see it at once; it is written within L{batch_delay}."""
        self._queued[key] = self._queued.get(key, 0) + amount
        self._on_total(key)
        if self._write_call is None and not self._sending:
            self._write_call = self._clock.callLater(self.batch_delay, self._write_queued)

    @inlineCallbacks
    def flush(self) -> Any:
        """
        Write everything charged so far, now (a batch waiting to be retried is
        retried at once); fires when it is written, or when a write failed.
        """
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None
        while self._sending or self._queued:
            if self._writing is None:
                if self._sending:
                    self._send()
                else:
                    self._write_queued()
            writing = self._writing
            if writing is None:
                break
            yield writing
            if self.up is False:
                break  # it failed: retried on its schedule
            if self._write_call is not None and self._write_call.active():
                self._write_call.cancel()  # the next batch goes now, below
            self._write_call = None

    def take_unwritten(self) -> list[Charge]:
        """
        Every charge not written yet, as charges with ids (those already sent
        keep theirs: the ledger may have them); this book forgets them.
        """
        charges = list(self._sending) + [Charge(uuid.uuid4().hex, key, amount) for key, amount in self._queued.items()]
        self._sending, self._queued, self._sent_amounts = (), {}, {}
        return charges

    def stop(self) -> None:
        """No more retries (the process stops)."""
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None

    def _write_queued(self) -> None:
        self._write_call = None
        if self._sending or not self._queued:
            return
        keys = list(self._queued)[:MAX_BATCH]
        self._sending = tuple(Charge(uuid.uuid4().hex, key, self._queued.pop(key)) for key in keys)
        for charge in self._sending:
            self._sent_amounts[charge.key] = self._sent_amounts.get(charge.key, 0) + charge.amount
        self._send()

    def _send(self) -> None:
        self._write_call = None
        for charge in self._sending:
            self._epoch[charge.key] = self._epoch.get(charge.key, 0) + 1
        # Set before the callbacks: a write that fails at once has already ended when addCallbacks returns.
        self._writing = writing = self._ledger.write(self._sending, int(self._clock.seconds()))
        writing.addCallbacks(self._written, self._write_failed)

    def _written(self, totals: dict[WindowKey, int]) -> None:
        self._writing = None
        batch, self._sending = self._sending, ()
        self._retries = 0
        for charge in batch:
            self._epoch[charge.key] = self._epoch.get(charge.key, 0) + 1
            left = self._sent_amounts.pop(charge.key, charge.amount) - charge.amount  # (taken at stop: nothing left)
            if left:
                self._sent_amounts[charge.key] = left
        for key, total in totals.items():
            # Our charge's total is in the ledger; only a read we are sure of may lower it (see read).
            self._known[key] = max(self._known.get(key, 0), total)
            self._on_total(key)
        self._reached()
        if self._queued:
            self._write_call = self._clock.callLater(0, self._write_queued)

    def _write_failed(self, failure: Failure) -> None:
        self._writing = None
        delay = RETRY_DELAYS[min(self._retries, len(RETRY_DELAYS) - 1)]
        self._retries += 1
        self.unreachable("writing", failure, f"{len(self._sending)} charges kept, retried in {delay}s")
        self._write_call = self._clock.callLater(delay, self._send)

    def read(
        self, window_starts: Iterable[int], process: str | None, now: int, live_since: int,
    ) -> Deferred[Reading | None]:
        """
        Read the ledger's totals of the windows starting at C{window_starts}
        (fires with the L{Reading}, or C{None} if the ledger is unreachable).
        A key whose total the read shows lower than known (an operator reset
        it, or it was deleted) is lowered, unless one of our charges to it was
        under way while the read ran (the read may not include it).
        """
        starts = set(window_starts)
        before = dict(self._epoch)
        busy = {charge.key for charge in self._sending}

        def read(reading: Reading) -> Reading:
            self.read_once = True
            for key in {key for key in self._known if key[2] in starts} | reading.totals.keys():
                total = reading.totals.get(key, 0)
                known = self._known.get(key, 0)
                overlapped = key in busy or self._epoch.get(key, 0) != before.get(key, 0)
                new = max(known, total) if overlapped else total
                if new != known:
                    self._known[key] = new
                    self._on_total(key)
            # Windows that are over are no longer decided on: forget them.
            for key in [key for key in self._known if key[2] not in starts and key not in self._sent_amounts]:
                del self._known[key]
            self._reached()
            return reading

        def failed(failure: Failure) -> None:
            self.unreachable("reading", failure, "deciding on what this process knows")
            return None

        return self._ledger.read(starts, process, now, live_since).addCallbacks(read, failed)

    def _reached(self) -> None:
        if self.up is not True:
            if self.up is False:
                self.log.info("budget ledger reachable again; {count} charges to write", count=self.unwritten)
            self.up = True
            self._on_ledger()

    def unreachable(self, doing: str, failure: Failure, consequence: str) -> None:
        """The ledger failed C{doing}: say so once (until it answers again)."""
        if self.up is not False:
            self.log.warn(
                "budget ledger unreachable ({doing}: {error}); {consequence}",
                doing=doing, error=failure.getErrorMessage(), consequence=consequence,
            )
            self.up = False
            self._on_ledger()
