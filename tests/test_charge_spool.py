"""
A process that stops while the ledger is unreachable keeps its unwritten
charges on disk; the next process on that ledger writes them, each once.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from agw.metering import ChargeSpool, Governor, ledger_identity
from tests.support import wait_until
from tests.test_ledger_outage import FlakyLedger, key


class ChargeSpoolTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.url = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        self.directory = os.path.abspath(self.mktemp())

    @inlineCallbacks
    def governor(self, down: bool = False, url: str | None = None) -> Any:
        url = url or self.url
        ledger = FlakyLedger(url, reactor)
        governor = Governor([key(10**6)], ledger, reactor, spool=ChargeSpool(self.directory, ledger_identity(url)))
        yield governor.start()
        ledger.down = down
        return governor

    def spent(self, governor: Governor) -> Any:
        return governor.states("team")[0].spent

    @inlineCallbacks
    def test_charges_unwritten_at_stop_are_written_by_the_next_start(self) -> Any:
        first = yield self.governor()
        first._ledger.down = True
        first.charge("team", None, 40)
        yield first.flush()  # sent once, failed: its id is fixed
        first.charge("team", None, 2)  # never sent
        yield first.stop()
        kept = glob.glob(os.path.join(self.directory, "*.jsonl"))
        self.assertEqual(len(kept), 1)
        spare = kept[0] + ".spare"
        shutil.copy(kept[0], spare)

        second = yield self.governor()
        self.addCleanup(second.stop)
        yield wait_until(lambda: not glob.glob(os.path.join(self.directory, "*.jsonl")))
        yield second.refresh()
        self.assertEqual(self.spent(second), 42)
        # The same file replayed again (a second worker, say): every charge counted once.
        os.replace(spare, kept[0])
        yield wait_until(lambda: not glob.glob(os.path.join(self.directory, "*.jsonl")))
        yield second.refresh()
        self.assertEqual(self.spent(second), 42)

    @inlineCallbacks
    def test_kept_charges_wait_for_the_ledger_and_only_their_own(self) -> Any:
        first = yield self.governor(down=True)
        first.charge("team", None, 5)
        yield first.stop()
        self.assertEqual(len(glob.glob(os.path.join(self.directory, "*.jsonl"))), 1)
        # Another ledger starting with the same spool directory leaves them alone.
        other = yield self.governor(url="sqlite://" + os.path.abspath(self.mktemp() + ".db"))
        self.addCleanup(other.stop)
        yield other.refresh()
        self.assertEqual(len(glob.glob(os.path.join(self.directory, "*.jsonl"))), 1)
        # Their own ledger, unreachable at first: kept until it answers.
        second = yield self.governor(down=True)
        self.addCleanup(second.stop)
        yield second.refresh()
        self.assertEqual(len(glob.glob(os.path.join(self.directory, "*.jsonl"))), 1)
        second._ledger.down = False
        yield second.refresh()
        yield wait_until(lambda: not glob.glob(os.path.join(self.directory, "*.jsonl")))
        yield second.refresh()
        self.assertEqual(self.spent(second), 5)
