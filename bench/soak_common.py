"""
What the soaks share (bench/money_soak.py, bench/chaos_soak.py): client
keys with budgets, a price computed by hand from the catalog, /metrics read
as sums, the budget ledger's rows, and a process tree's file descriptors
and memory.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common import children, rss_kib

PICO = 10**12  # USD budgets are kept in picodollars


def price(usage: dict[str, Any]) -> Decimal:
    """gpt-realtime's catalog price of one response, by hand from the provider's usage object (USD)."""
    details, cached = usage["input_token_details"], usage["input_token_details"]["cached_tokens_details"]
    out = usage["output_token_details"]
    per_million = (
        (details["text_tokens"] - cached["text_tokens"]) * Decimal(4) + cached["text_tokens"] * Decimal("0.4")
        + (details["audio_tokens"] - cached["audio_tokens"]) * Decimal(32) + cached["audio_tokens"] * Decimal("0.4")
        + out["text_tokens"] * Decimal(16) + out["audio_tokens"] * Decimal(64)
    )
    return per_million / 1_000_000


def expected_spend(unit: str, usages: Iterable[dict[str, Any]]) -> int:
    """What a budget in C{unit} must be charged for these usage objects, in the ledger's units (tokens, picodollars)."""
    usages = list(usages)
    if unit == "USD":
        return int(sum((price(u) for u in usages), Decimal(0)) * PICO)
    return sum(u["input_tokens"] + u["output_tokens"] for u in usages)


def budget_keys(consumers: dict[str, tuple[str, str, Decimal]]) -> list[dict[str, Any]]:
    """An C{apiKey} policy's keys: C{{consumer: (key, unit, limit)}}, each with a daily budget."""
    return [
        {"key": key, "metadata": {"name": name}, "budgets": [
            {"name": "daily", "limit": {"unit": unit, "amount": str(limit)}, "window": {"rolling": "24h"}},
        ]}
        for name, (key, unit, limit) in consumers.items()
    ]


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric_sums(port: int) -> dict[str, float]:
    """Each sample name of /metrics on C{port}, summed over its label sets."""
    values: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics_text(port)):
        for sample in family.samples:
            values[sample.name] += sample.value
    return values


def wait_charges_written(stats_port: int, timeout: float = 60.0) -> bool:
    """Poll until no worker holds a charge the ledger has not written; C{False} at the deadline."""
    deadline = time.monotonic() + timeout
    while metric_sums(stats_port).get("agw_budget_unwritten_charges", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    time.sleep(1.5)  # the last charges' flush (50 ms) and a refresh
    return True


def spent_by_consumer(url: str, postgres: Any = None) -> dict[str, int]:
    """Each consumer's spend in the budget ledger at C{url} (through C{postgres}, a L{PostgresServer}, for postgresql://)."""
    sql = "SELECT consumer, sum(spent) FROM agw_budget_spend GROUP BY consumer"
    if postgres is not None:
        rows = postgres.query(sql)
    else:
        with sqlite3.connect(url.partition("://")[2]) as connection:
            rows = connection.execute(sql).fetchall()
    return {consumer: int(spent) for consumer, spent in rows}


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_or_zero(pid: int) -> int:
    try:
        return rss_kib(pid)
    except OSError:  # gone meanwhile
        return 0


def footprint(pid: int) -> dict[str, Any]:
    """File descriptors and RSS (KiB) of C{pid} and its children (agw's workers), each summed, and how many processes."""
    pids = [pid, *sorted(children(pid))]
    each = [(fd_count(p), rss_or_zero(p)) for p in pids]
    return {
        "processes": len(pids), "fds": sum(f for f, _ in each), "rss_kib": sum(r for _, r in each),
        "each": [{"pid": p, "fds": f, "rss_kib": r} for p, (f, r) in zip(pids, each)],
    }
