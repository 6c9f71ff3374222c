"""
The budget ledger going away and coming back: no charge is lost or written
twice, each process enforces its share of what was left meanwhile,
readiness and a metric say so, and late spend lands in its own window.
"""

from __future__ import annotations

import json
import os
import urllib.request
from decimal import Decimal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase

from agw.config import Budget, BudgetUnit, ClientKey
from agw.metering import BudgetLedger, Governor
from tests.support import PostgresServer, catalog_price, listening_fake, open_client, recv_event, registry_samples, wait_until
from tests.test_budgets import TEAM_B, BudgetGateway, auth, respond

PICO = 10**12


class FlakyLedger(BudgetLedger):
    """A real SQLite ledger that can be made to fail, or to lose the answer of a write it made."""

    down = False
    lose_next_answer = False

    def write(self, charges: Any, now: int) -> Any:
        if self.down:
            return fail(ConnectionError("ledger down"))
        written = super().write(charges, now)
        if self.lose_next_answer:
            self.lose_next_answer = False
            # Committed, but the answer never came (the connection broke right after the commit).
            return written.addCallback(lambda _: fail(ConnectionError("connection lost after commit")))
        return written

    def read(self, *args: Any, **kwargs: Any) -> Any:
        return fail(ConnectionError("ledger down")) if self.down else super().read(*args, **kwargs)


def key(amount: int = 1000, seconds: int = 60, unit: BudgetUnit = BudgetUnit.TOKENS) -> ClientKey:
    return ClientKey(digest="x", metadata={"name": "team"}, budgets=(Budget("b", unit, Decimal(amount), seconds),))


class PostgreSQLRestartTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_charges_made_while_postgresql_restarts_are_all_written(self) -> Any:
        """Charges during an outage are kept and written once the server is back; readiness and a metric say so."""
        server = PostgresServer(self)
        fake, upstream_port = yield listening_fake(self)
        agw = yield BudgetGateway(self, upstream_port, server.url).start()
        governor = agw.gateway.governor
        ready_port = agw.service.readiness.port.getHost().port

        def readiness() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/healthz/ready", timeout=5) as response:
                return response.read().decode()

        seen: dict[str, Any] = {}

        def session() -> None:
            # A client thread: the reactor runs the gateway meanwhile (waits go through it).
            def wait(predicate: Any, timeout: float = 10) -> None:
                blockingCallFromThread(reactor, wait_until, predicate, timeout)

            with open_client(agw.url, **auth(TEAM_B)) as ws:
                recv_event(ws)
                respond(ws, "before")
                wait(lambda: governor.unwritten == 0)
                server.stop()
                seen["during"] = [respond(ws, f"during-{n}")["type"] for n in range(3)]  # the session goes on
                wait(lambda: governor.ledger_up is False)
                seen["unwritten"] = blockingCallFromThread(reactor, lambda: governor.unwritten)
                seen["readiness"] = readiness()
                seen["samples"] = blockingCallFromThread(reactor, registry_samples, agw.gateway.metrics.registry)
                server.start()
                wait(lambda: governor.unwritten == 0 and governor.ledger_up, timeout=30)

        yield deferToThread(session)
        self.assertEqual(seen["during"], ["response.done"] * 3)
        self.assertGreater(seen["unwritten"], 0)
        self.assertIn("budget ledger unreachable", seen["readiness"])
        self.assertEqual(seen["samples"][("agw_budget_ledger_up", frozenset())], 0)
        self.assertGreater(seen["samples"][("agw_budget_unwritten_charges", frozenset())], 0)
        self.assertEqual((yield deferToThread(readiness)), "ready\n")
        rows = yield deferToThread(server.query, "SELECT budget, sum(spent) FROM agw_budget_spend WHERE consumer = 'team-b' GROUP BY budget")
        spent = dict(rows)
        self.assertEqual(len(fake.ledger), 4)
        tokens = sum(entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in fake.ledger)
        usd = sum(catalog_price(entry.usage) for entry in fake.ledger)
        self.assertEqual(spent["audit"], tokens)
        self.assertEqual(spent["daily-usd"], int(usd * PICO))


class OutageRuleTests(TestCase):
    """Governors on one SQLite file (as processes on one host): what each decides while the ledger is down."""

    timeout = 30

    def ledger(self, path: str) -> FlakyLedger:
        ledger = FlakyLedger("sqlite://" + path, reactor)
        return ledger

    @inlineCallbacks
    def governors(self, count: int, budget: ClientKey, clock: Any = reactor) -> Any:
        path = os.path.abspath(self.mktemp() + ".db")
        made = []
        for _ in range(count):
            governor = Governor([budget], self.ledger(path), clock)
            yield governor.start()
            self.addCleanup(governor.stop)
            made.append(governor)
        for governor in made:  # every one has seen the others alive
            yield governor.refresh()
        return made

    @inlineCallbacks
    def test_each_process_enforces_its_share_of_what_was_left(self) -> Any:
        first, second = yield self.governors(2, key(1000))
        self.assertEqual((first.sharers, second.sharers), (2, 2))
        first.charge("team", None, 400)
        yield first.flush()
        yield first.refresh()
        yield second.refresh()
        first._ledger.down = True
        yield first.refresh()
        self.assertIs(first.ledger_up, False)
        # 600 were left when the ledger went down: this process may spend half of it.
        state = first.states("team")[0]
        self.assertEqual((state.spent, state.limit), (400, 700))
        first.charge("team", None, 299)
        first.admit("team").release()  # admitted: 1 left of its share
        first.charge("team", None, 1)
        refused = first.admit("team")
        # Final while the ledger is down (no read will give it more): a response the server starts is stopped too.
        self.assertEqual((refused.code, refused.final), ("rate_limit_exceeded", True))
        self.assertIn("until the budget ledger answers again", refused.message)
        # Back: the real limit again, and the charges made meanwhile are written.
        first._ledger.down = False
        yield first.refresh()
        yield first.flush()
        yield second.refresh()
        self.assertEqual([g.states("team")[0].spent for g in (first, second)], [700, 700])
        first.admit("team").release()  # its share of the 300 left

    @inlineCallbacks
    def test_a_charge_whose_answer_was_lost_is_written_once(self) -> Any:
        (governor,) = yield self.governors(1, key(10**6))
        ledger = governor._ledger
        ledger.lose_next_answer = True
        governor.charge("team", None, 7)
        yield governor.flush()  # written, but agw does not know it
        self.assertEqual(governor.unwritten, 1)
        yield governor.flush()  # sent again, with the same id
        self.assertEqual(governor.unwritten, 0)
        yield governor.refresh()
        self.assertEqual(governor.states("team")[0].spent, 7)
        reading = yield ledger.read([governor.states("team")[0].window_start], None, 0, 0)
        self.assertEqual(list(reading.totals.values()), [7])

    @inlineCallbacks
    def test_spend_written_late_lands_in_its_own_window(self) -> Any:
        clock = Clock()
        clock.advance(100)  # in the window [60, 120) of a 60-second budget
        (governor,) = yield self.governors(1, key(10**6, seconds=60), clock)
        governor._ledger.down = True
        governor.charge("team", None, 5)
        clock.advance(1)  # the write fails
        self.assertEqual(governor.unwritten, 1)
        clock.advance(300)  # long after the window ended
        governor._ledger.down = False
        yield governor.flush()
        self.assertEqual(governor.unwritten, 0)
        reading = yield governor._ledger.read([60, 360], None, 0, 0)
        self.assertEqual(reading.totals, {("team", "b", 60): 5})

    @inlineCallbacks
    def test_manual_reset_is_honoured_at_the_next_read(self) -> Any:
        """An operator who deletes a consumer's spend row gives it its budget back."""
        (governor,) = yield self.governors(1, key(100))
        governor.charge("team", None, 100)
        yield governor.flush()
        self.assertIsNotNone(governor.blocking("team"))
        yield governor._ledger._pool.runOperation("DELETE FROM agw_budget_spend WHERE consumer = 'team'")
        yield governor.refresh()
        self.assertEqual(governor.states("team")[0].spent, 0)
        self.assertIsNone(governor.blocking("team"))

    @inlineCallbacks
    def test_nothing_is_allowed_before_the_ledger_was_read(self) -> Any:
        """A process that never read the ledger cannot know what others spent: Block budgets refuse (503)."""
        ledger = self.ledger(os.path.abspath(self.mktemp() + ".db"))
        ledger.down = True
        governor = Governor([key(100)], ledger, reactor)
        self.addCleanup(governor.stop)
        yield governor.start()
        self.assertFalse(governor.ready)
        self.assertEqual(governor.blocking("team").code, "budget_ledger_unavailable")
        ledger.down = False
        yield governor.refresh()
        self.assertTrue(governor.ready)
        self.assertIsNone(governor.blocking("team"))


class LedgerAtStartTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_a_ledger_down_at_start_is_read_once_it_is_up(self) -> Any:
        """The refresh loop runs whether or not the first read worked; readiness waits for a read."""
        server = PostgresServer(self)
        yield deferToThread(server.stop)
        fake, upstream_port = yield listening_fake(self)
        agw = BudgetGateway(self, upstream_port, server.url)
        agw.service.startService()
        self.addCleanup(agw.stop)
        yield wait_until(lambda: agw.gateway.governor.ledger_up is False)
        self.assertFalse(agw.service.is_ready())
        yield deferToThread(server.start)
        yield wait_until(agw.service.is_ready, timeout=30)
        # Someone else's spend is seen: the tables were created and the loop kept reading.
        yield deferToThread(
            server.query, "INSERT INTO agw_budget_spend VALUES ('team-a', 'daily-tokens', %s, 1000)",
            agw.gateway.governor.states("team-a")[0].window_start,
        )
        yield wait_until(lambda: agw.gateway.governor.blocking("team-a") is not None, timeout=10)
        self.assertEqual(json.loads(json.dumps(agw.gateway.governor.states("team-a")[0].as_json(0)))["spent"], 1000)


class FreshReadTests(TestCase):
    """Near a budget's end, a decision can wait for a fresh read of everyone's spend."""

    timeout = 30

    @inlineCallbacks
    def test_fresh_fires_even_when_the_read_ends_at_once(self) -> Any:
        ledger = FlakyLedger("sqlite://" + os.path.abspath(self.mktemp() + ".db"), reactor)
        governor = Governor([key(100)], ledger, reactor)
        self.addCleanup(governor.stop)
        yield governor.start()
        governor.charge("team", None, 99)  # within a few responses of the end
        ledger.down = True  # the read fails at once (synchronously)
        fired: list[object] = []
        governor.fresh("team").addCallback(fired.append)
        self.assertEqual(fired, [None])

    @inlineCallbacks
    def test_far_from_the_end_nothing_waits(self) -> Any:
        ledger = FlakyLedger("sqlite://" + os.path.abspath(self.mktemp() + ".db"), reactor)
        governor = Governor([key(10**9)], ledger, reactor)
        self.addCleanup(governor.stop)
        yield governor.start()
        reads: list[object] = []
        original = ledger.read
        ledger.read = lambda *a, **kw: reads.append(a) or original(*a, **kw)  # type: ignore[method-assign]
        fired: list[object] = []
        governor.fresh("team").addCallback(fired.append)
        self.assertEqual((fired, reads), ([None], []))
