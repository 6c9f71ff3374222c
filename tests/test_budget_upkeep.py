"""
The ledger over time: reloads keep one governor per database, a refresh
reads the current windows only and reports only what changed, old windows
are pruned, and what the database needs is checked before start-up.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from typing import Any
from unittest import mock

import yaml
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import parse_config
from agw.config import Budget, BudgetUnit, ClientKey
from agw.metering import BudgetLedger, Governor, LedgerURLError, check_ledger_url
from tests.support import BACKEND_KEY, REPO, listening_fake, wait_until
from tests.test_budgets import BudgetGateway, budget_config


def two_budgets() -> ClientKey:
    return ClientKey(digest="x", metadata={"name": "team"}, budgets=(
        Budget("minute", BudgetUnit.TOKENS, Decimal(10**6), 60),
        Budget("month", BudgetUnit.TOKENS, Decimal(10**9), 30 * 86400),
    ))


class RefreshCostTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_refresh_reads_current_windows_and_reports_changes_only(self) -> Any:
        """A 1-minute and a 30-day budget: a refresh reads two rows, not a month of minutes, and says nothing new twice."""
        path = os.path.abspath(self.mktemp() + ".db")
        ledger = BudgetLedger("sqlite://" + path, reactor)
        clock = Clock()
        now = 40 * 86400 + 30
        clock.advance(now)
        yield ledger.start()
        # A month of past minute windows, as a busy consumer leaves them.
        with sqlite3.connect(path) as db:
            db.executemany(
                "INSERT INTO agw_budget_spend VALUES ('team', 'minute', ?, 5)",
                [(now - now % 60 - 60 * n,) for n in range(1, 20_001)],
            )
        changed: list[Any] = []
        governor = Governor([two_budgets()], ledger, clock, on_change=changed.append)
        self.addCleanup(governor.stop)
        read = []
        original = ledger.read
        ledger.read = lambda *a, **kw: original(*a, **kw).addCallback(lambda r: read.append(r) or r)  # type: ignore[method-assign]
        yield governor.start()
        self.assertLessEqual(len(read[0].totals), 2)
        yield governor.refresh()  # after the first prune (windows over a week old are gone)
        changed.clear()
        yield governor.refresh()
        self.assertEqual(changed, [])  # nothing changed: no metric is touched
        governor.charge("team", None, 3)
        self.assertEqual({state.budget.name for state in changed}, {"minute", "month"})

    @inlineCallbacks
    def test_windows_long_over_are_pruned(self) -> Any:
        path = os.path.abspath(self.mktemp() + ".db")
        ledger = BudgetLedger("sqlite://" + path, reactor)
        clock = Clock()
        now = 400 * 86400
        clock.advance(now)
        yield ledger.start()
        minute_start = now - now % 60
        with sqlite3.connect(path) as db:
            db.executemany("INSERT INTO agw_budget_spend VALUES ('team', 'minute', ?, 5)", [
                (minute_start - 60,),  # the last window: kept (history)
                (minute_start - 8 * 86400,),  # ended more than a week ago: pruned
            ])
            month_start = now - now % (30 * 86400)
            db.execute("INSERT INTO agw_budget_spend VALUES ('team', 'month', ?, 5)", (month_start - 30 * 86400,))
            db.execute("INSERT INTO agw_budget_charges VALUES ('old', ?)", (now - 8 * 86400,))
        governor = Governor([two_budgets()], ledger, clock)
        self.addCleanup(governor.stop)
        yield governor.start()
        yield governor._ledger._pool.runOperation("SELECT 1")  # the prune went before this in the one ledger thread
        with sqlite3.connect(path) as db:
            windows = sorted(db.execute("SELECT budget, window_start FROM agw_budget_spend").fetchall())
            charges = db.execute("SELECT count(*) FROM agw_budget_charges").fetchone()[0]
        self.assertEqual(windows, [("minute", minute_start - 60), ("month", month_start - 30 * 86400)])
        self.assertEqual(charges, 0)


class ReloadTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_reloads_keep_one_governor_per_database(self) -> Any:
        fake, upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        agw = yield BudgetGateway(self, upstream_port, database).start()
        governor = agw.gateway.governor
        config = yaml.safe_load(budget_config(upstream_port, database))
        budget = config["binds"][0]["listeners"][0]["routes"][0]["policies"]["apiKey"]["keys"][0]["budgets"][0]
        for amount in range(200, 700, 100):  # five reloads that change a budget
            budget["limit"]["amount"] = amount
            for route in config["binds"][0]["listeners"][0]["routes"]:
                route["policies"]["apiKey"]["keys"][0]["budgets"][0] = budget
            agw.service.reload(parse_config(yaml.safe_dump(config), {"OPENAI_API_KEY": BACKEND_KEY}))
        self.assertIs(agw.gateway.governor, governor)
        self.assertEqual(agw.gateway.retired_governors, [])
        self.assertEqual(governor.states("team-a")[0].budget.amount, 600)
        # Another database: a new governor; the old one stops reading (its sessions' charges are still written).
        config["config"]["database"]["url"] = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        agw.service.reload(parse_config(yaml.safe_dump(config), {"OPENAI_API_KEY": BACKEND_KEY}))
        self.assertIsNot(agw.gateway.governor, governor)
        self.assertFalse(governor._refreshing.running)
        yield wait_until(lambda: agw.gateway.governor._refreshing.running)


class DatabaseChecksTests(SynchronousTestCase):
    def test_sqlite_without_returning_is_refused(self) -> None:
        with mock.patch("sqlite3.sqlite_version_info", (3, 31, 1)), mock.patch("sqlite3.sqlite_version", "3.31.1"):
            with self.assertRaises(LedgerURLError) as raised:
                check_ledger_url("sqlite://budgets.db")
        self.assertIn("SQLite 3.31.1 is too old", str(raised.exception))

    def test_missing_driver_is_one_line_naming_the_extra(self) -> None:
        """A postgresql:// database without psycopg: --validate-only says what to install, in one line, exit 1."""
        blocked = self.mktemp()
        os.makedirs(os.path.join(blocked, "psycopg"))
        with open(os.path.join(blocked, "psycopg", "__init__.py"), "w") as f:
            f.write("raise ImportError('psycopg is not installed (test)')\n")
        with open(os.path.join(REPO, "config.yaml")) as f:
            config = yaml.safe_load(f)
        config["config"] = {"database": {"url": "postgresql://agw@127.0.0.1:1/agw"}}
        config["binds"][0]["listeners"][0]["routes"][0]["policies"]["apiKey"] = {"keys": [
            {"key": "k", "metadata": {"name": "n"}, "budgets": [
                {"name": "b", "limit": {"unit": "Tokens", "amount": 1}, "window": {"rolling": "1h"}},
            ]},
        ]}
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        for extra in (["--validate-only"], []):
            done = subprocess.run(
                [twistd, "-n", "--pidfile=", "agw", "-f", path, "-i", "127.0.0.1", *extra],
                env={**os.environ, "PYTHONPATH": os.pathsep.join([blocked, REPO]), "OPENAI_API_KEY": "sk-test"},
                capture_output=True, text=True, timeout=50,
            )
            output = done.stdout + done.stderr
            self.assertEqual(done.returncode, 1, output)
            self.assertNotIn("Traceback", output)
            # One line says it (at start-up twistd prints its usage text before it: issue 26's to shorten).
            self.assertIn(
                "config.database.url: postgresql:// needs the PostgreSQL driver, which is not installed: "
                "pip install 'agw[postgres]'", output.strip().splitlines()[-1],
            )



class ReserveOptionTests(SynchronousTestCase):
    """What a response is held for before one was seen: a knob per unit, checked, reaching the governor."""

    def options(self, *arguments: str) -> Any:
        from agw.serve._options import Options

        options = Options()
        self.patch(os, "environ", {**os.environ, "OPENAI_API_KEY": BACKEND_KEY})
        options.parseOptions(["-f", os.path.join(REPO, "config.yaml"), *arguments])
        return options

    def test_bad_values_are_usage_errors(self) -> None:
        from twisted.python.usage import UsageError

        for arguments, message in ((["--reserve-usd", "nothing"], "--reserve-usd: expected an amount above 0"),
                                   (["--reserve-usd", "0"], "--reserve-usd: expected an amount above 0"),
                                   (["--reserve-tokens", "0"], "--reserve-tokens: expected 1 or more")):
            with self.assertRaises(UsageError) as raised:
                self.options(*arguments)
            self.assertIn(message, str(raised.exception))

    def test_values_reach_the_gateway(self) -> None:
        from agw.serve._options import gateway_from_options

        gateway = gateway_from_options(self.options("--reserve-tokens", "512", "--reserve-usd", "0.25", "--access-log", "off"))
        self.assertEqual((gateway.reserve.tokens, gateway.reserve.usd), (512, Decimal("0.25")))
