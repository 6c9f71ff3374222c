"""
Where budget spend is kept (C{config.database.url}): SQLite (one file,
shared by every worker process of a host) or PostgreSQL (shared by many
hosts), through C{twisted.enterprise.adbapi}, so no query ever blocks the
reactor.

Spend is an integer per consumer, budget and window: tokens, or USD in
pico-dollars (a catalog rate has at most 6 decimals per 1M tokens, so every
cost is a whole number of pico-dollars). Each charge is one atomic
C{INSERT ... ON CONFLICT DO UPDATE ... RETURNING}: two workers or two hosts
charging at once both count, and each learns the new total.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

_TABLE = """CREATE TABLE IF NOT EXISTS agw_budget_spend (
    consumer TEXT NOT NULL,
    budget TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (consumer, budget, window_start)
)"""
_CHARGE = (
    "INSERT INTO agw_budget_spend (consumer, budget, window_start, spent) VALUES ({p}, {p}, {p}, {p}) "
    "ON CONFLICT (consumer, budget, window_start) DO UPDATE SET spent = agw_budget_spend.spent + excluded.spent "
    "RETURNING spent"
)
_TOTALS = "SELECT consumer, budget, window_start, spent FROM agw_budget_spend WHERE window_start >= {p}"

WindowKey = tuple[str, str, int]  # consumer, budget, window start (Unix seconds)


class LedgerURLError(ValueError):
    """A C{config.database.url} agw cannot use."""


def _sqlite_setup(connection: Any) -> None:
    # Several worker processes share the file: wait for a lock rather than fail, and let readers read.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes of agw, not of the machine
    connection.execute("PRAGMA busy_timeout=10000")


class BudgetLedger:
    """Budget spend in a database; every method returns a Deferred (the query runs in adbapi's threads)."""

    def __init__(self, url: str, reactor: Any = None) -> None:
        scheme, _, rest = url.partition("://")
        kwargs: dict[str, Any] = {"cp_reactor": reactor} if reactor is not None else {}
        if scheme == "sqlite":
            if not rest:
                raise LedgerURLError("sqlite:// needs a file path, e.g. sqlite://budgets.db")
            self._pool = adbapi.ConnectionPool(
                "sqlite3", rest, check_same_thread=False, timeout=10.0, cp_min=1, cp_max=1,
                cp_openfun=_sqlite_setup, **kwargs,
            )
            self._mark = "?"
        elif scheme in ("postgresql", "postgres"):
            self._pool = adbapi.ConnectionPool("psycopg", url, cp_min=1, cp_max=4, **kwargs)
            self._mark = "%s"
        else:
            raise LedgerURLError(f"unsupported database {scheme!r}: expected sqlite:// or postgresql://")

    def start(self) -> Deferred[None]:
        """Create the table if it is not there."""
        # PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a
        # concurrent one (two hosts starting at once: one fails on the
        # catalog's unique index); by the second try the table exists.
        return self._pool.runOperation(_TABLE).addErrback(lambda _: self._pool.runOperation(_TABLE))

    def charge(self, key: WindowKey, amount: int) -> Deferred[int]:
        """Add C{amount} to C{key}'s spend; fires with the new total (everyone's charges included)."""
        return self._pool.runInteraction(self._charge, key, amount)

    def _charge(self, cursor: Any, key: WindowKey, amount: int) -> int:
        cursor.execute(_CHARGE.format(p=self._mark), (*key, amount))
        return int(cursor.fetchone()[0])

    def totals(self, since: int) -> Deferred[dict[WindowKey, int]]:
        """Every spend of windows that started at C{since} or later."""
        query = self._pool.runQuery(_TOTALS.format(p=self._mark), (since,))
        return query.addCallback(lambda rows: {(c, b, int(w)): int(s) for c, b, w, s in _rows(rows)})

    def close(self) -> None:
        self._pool.close()


def _rows(rows: Iterable[Any]) -> Iterable[tuple[str, str, int, int]]:
    return ((row[0], row[1], row[2], row[3]) for row in rows)
