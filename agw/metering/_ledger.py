"""
Where budget spend is kept (C{config.database.url}): SQLite (one file,
shared by every worker process of a host) or PostgreSQL (shared by many
hosts), through C{twisted.enterprise.adbapi}, so no query ever blocks the
reactor.

Spend is an integer per consumer, budget and window: tokens, or USD in
pico-dollars (a catalog rate has at most 6 decimals per 1M tokens, so every
cost is a whole number of pico-dollars). A write is a batch of L{Charge}s in
one transaction. Each charge has an id: it is recorded in
C{agw_budget_charges} in the same transaction that adds its amount, so a
charge whose outcome was lost (the connection broke after the commit) and
is sent again is not added twice. Each amount is one atomic
C{INSERT ... ON CONFLICT DO UPDATE ... RETURNING}: two workers or two hosts
charging at once both count, and each learns the new total.

Every process that enforces budgets writes a heartbeat row when it reads:
the number of live rows is how many processes share the budgets (see
L{agw.metering.Governor}'s rule while the ledger is unreachable).
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agw_budget_spend (
    consumer TEXT NOT NULL,
    budget TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (consumer, budget, window_start)
)""",
    # Reads ask for the current windows only: without this they would scan every past window.
    "CREATE INDEX IF NOT EXISTS agw_budget_spend_window ON agw_budget_spend (window_start)",
    "CREATE TABLE IF NOT EXISTS agw_budget_charges (charge_id TEXT PRIMARY KEY, written_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS agw_ledger_processes (process TEXT PRIMARY KEY, seen BIGINT NOT NULL)",
)
_NEW_CHARGE = (
    "INSERT INTO agw_budget_charges (charge_id, written_at) VALUES ({p}, {p}) "
    "ON CONFLICT (charge_id) DO NOTHING RETURNING charge_id"
)
_ADD = (
    "INSERT INTO agw_budget_spend (consumer, budget, window_start, spent) VALUES ({p}, {p}, {p}, {p}) "
    "ON CONFLICT (consumer, budget, window_start) DO UPDATE SET spent = agw_budget_spend.spent + excluded.spent "
    "RETURNING spent"
)
_TOTAL = "SELECT spent FROM agw_budget_spend WHERE consumer = {p} AND budget = {p} AND window_start = {p}"
_HEARTBEAT = (
    "INSERT INTO agw_ledger_processes (process, seen) VALUES ({p}, {p}) "
    "ON CONFLICT (process) DO UPDATE SET seen = excluded.seen"
)
_SHARERS = "SELECT count(*) FROM agw_ledger_processes WHERE seen >= {p}"
_LEAVE = "DELETE FROM agw_ledger_processes WHERE process = {p}"

WindowKey = tuple[str, str, int]  # consumer, budget, window start (Unix seconds)
# SQLite gained RETURNING in 3.35 (2021); older libraries cannot run the charge.
SQLITE_MIN = (3, 35, 0)
# A connection attempt, and any one statement, give up after this many seconds: a
# ledger that does not answer is treated as down (and retried) rather than waited for.
TIMEOUT = 5


class LedgerURLError(ValueError):
    """A C{config.database.url} agw cannot use (the message says what to do)."""


@frozen
class Charge:
    """Spend to add once: C{amount} units to C{key}, under the unique C{id}."""

    id: str
    key: WindowKey
    amount: int


@frozen
class Reading:
    """One read of the ledger: the spend of the windows asked for, and how many processes share it."""

    totals: dict[WindowKey, int]
    sharers: int


def check_ledger_url(url: str) -> str:
    """
    The scheme of C{url} (C{sqlite} or C{postgresql}), once this
    installation can use it; raises L{LedgerURLError} naming what is
    missing (used at start-up and by C{--validate-only}).
    """
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        if not rest:
            raise LedgerURLError("sqlite:// needs a file path, e.g. sqlite://budgets.db")
        if sqlite3.sqlite_version_info < SQLITE_MIN:
            raise LedgerURLError(
                f"SQLite {sqlite3.sqlite_version} is too old for budgets: agw needs {'.'.join(map(str, SQLITE_MIN))} "
                "or newer (RETURNING); use a newer Python build or postgresql://"
            )
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        try:
            importlib.import_module("psycopg")  # only checked here: the pool imports it where it connects
        except ImportError:
            raise LedgerURLError(
                "postgresql:// needs the PostgreSQL driver, which is not installed: pip install 'agw[postgres]'"
            ) from None
        return "postgresql"
    raise LedgerURLError(f"unsupported database {scheme!r}: expected sqlite:// or postgresql://")


def _sqlite_setup(connection: Any) -> None:
    # Several worker processes share the file: wait for a lock rather than fail, and let readers read.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes of agw, not of the machine
    connection.execute(f"PRAGMA busy_timeout={TIMEOUT * 1000}")


class ReconnectingPool(adbapi.ConnectionPool):
    """
    An adbapi pool that drops a thread's connection whenever an interaction
    fails, so the next one connects anew: after a database restart or a
    network drop the ledger works again as soon as the server does.
    (adbapi's own C{cp_reconnect} logs a traceback for every failed
    rollback, which during an outage would be one per retry.)
    """

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        conn = self.connectionFactory(self)
        trans = self.transactionFactory(self, conn)
        try:
            result = interaction(trans, *args, **kw)
            trans.close()
            conn.commit()
            return result
        except BaseException:
            raw = conn._connection
            try:
                raw.rollback()
            except Exception:
                pass  # the connection is dead: it is dropped below either way
            if self.connections.get(self.threadID()) is raw:
                del self.connections[self.threadID()]
                try:
                    raw.close()
                except Exception:
                    pass
            raise


class BudgetLedger:
    """Budget spend in a database; every method returns a Deferred (the query runs in adbapi's threads)."""

    def __init__(self, url: str, reactor: Any = None) -> None:
        scheme = check_ledger_url(url)
        kwargs: dict[str, Any] = {"cp_reactor": reactor} if reactor is not None else {}
        if scheme == "sqlite":
            self._pool: adbapi.ConnectionPool = ReconnectingPool(
                "sqlite3", url.partition("://")[2], check_same_thread=False, timeout=float(TIMEOUT), cp_min=1, cp_max=1,
                cp_openfun=_sqlite_setup, cp_noisy=False, **kwargs,
            )
            self._mark = "?"
        else:
            # Timeouts at every level a dead server or network can stall: connecting,
            # a statement, and a TCP connection that stopped answering.
            self._pool = ReconnectingPool(
                "psycopg", url, connect_timeout=TIMEOUT, options=f"-c statement_timeout={TIMEOUT * 1000}",
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                tcp_user_timeout=TIMEOUT * 1000, cp_min=1, cp_max=2, cp_noisy=False, **kwargs,
            )
            self._mark = "%s"

    def _sql(self, statement: str) -> str:
        return statement.format(p=self._mark)

    def start(self) -> Deferred[None]:
        """Create the tables if they are not there."""
        return self._pool.runInteraction(self._create)

    def _create(self, cursor: Any) -> None:
        for statement in _SCHEMA:
            try:
                cursor.execute(statement)
            except Exception:
                # PostgreSQL's CREATE ... IF NOT EXISTS is not safe against a concurrent one
                # (two hosts starting at once: one fails on the catalog's unique index).
                cursor.connection.rollback()
                cursor.execute(statement)
                cursor.connection.commit()

    def write(self, charges: Sequence[Charge], now: int) -> Deferred[dict[WindowKey, int]]:
        """
        Add every charge not written before (by id), in one transaction;
        fires with each key's total after it (everyone's charges included).
        """
        return self._pool.runInteraction(self._write, tuple(charges), now)

    def _write(self, cursor: Any, charges: tuple[Charge, ...], now: int) -> dict[WindowKey, int]:
        totals = {}
        for charge in charges:
            cursor.execute(self._sql(_NEW_CHARGE), (charge.id, now))
            if cursor.fetchone() is not None:
                cursor.execute(self._sql(_ADD), (*charge.key, charge.amount))
            else:  # written before, its answer lost: only read where the key stands
                cursor.execute(self._sql(_TOTAL), charge.key)
            row = cursor.fetchone()
            totals[charge.key] = int(row[0]) if row is not None else 0
        return totals

    def read(self, window_starts: Iterable[int], process: str | None, now: int, live_since: int) -> Deferred[Reading]:
        """
        The spend of every window starting at one of C{window_starts}; with
        C{process}, also say that process is alive (at C{now}) and count the
        processes alive since C{live_since}.
        """
        return self._pool.runInteraction(self._read, sorted(set(window_starts)), process, now, live_since)

    def _read(self, cursor: Any, starts: list[int], process: str | None, now: int, live_since: int) -> Reading:
        sharers = 1
        if process is not None:
            cursor.execute(self._sql(_HEARTBEAT), (process, now))
            cursor.execute(self._sql(_SHARERS), (live_since,))
            sharers = max(1, int(cursor.fetchone()[0]))
        marks = ", ".join(self._mark for _ in starts)
        cursor.execute(
            f"SELECT consumer, budget, window_start, spent FROM agw_budget_spend WHERE window_start IN ({marks})", starts,
        )
        totals = {(str(c), str(b), int(w)): int(s) for c, b, w, s in cursor.fetchall()}
        return Reading(totals, sharers)

    def prune(self, budgets: Iterable[tuple[str, int]], charges_before: int, processes_before: int) -> Deferred[None]:
        """
        Forget windows before each C{(budget name, oldest window start to
        keep)}, charge ids written before C{charges_before} and processes
        last seen before C{processes_before}.
        """
        return self._pool.runInteraction(self._prune, tuple(budgets), charges_before, processes_before)

    def _prune(self, cursor: Any, budgets: tuple[tuple[str, int], ...], charges_before: int, processes_before: int) -> None:
        for name, keep_from in budgets:
            cursor.execute(self._sql("DELETE FROM agw_budget_spend WHERE budget = {p} AND window_start < {p}"), (name, keep_from))
        cursor.execute(self._sql("DELETE FROM agw_budget_charges WHERE written_at < {p}"), (charges_before,))
        cursor.execute(self._sql("DELETE FROM agw_ledger_processes WHERE seen < {p}"), (processes_before,))

    def leave(self, process: str) -> Deferred[None]:
        """C{process} stops: it no longer shares the budgets."""
        return self._pool.runOperation(self._sql(_LEAVE), (process,))

    def close(self) -> None:
        """Stop the pool (joins its threads: each is bounded by L{TIMEOUT})."""
        self._pool.close()
