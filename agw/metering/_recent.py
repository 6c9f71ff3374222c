"""
L{RecentCosts}: the last priced records of one process, in a bounded ring,
for the admin page's "recent cost by consumer and model". Prometheus keeps
the totals since start; this keeps what an operator asks about now.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

# Records kept (about 100 bytes each): a busy process forgets sooner than WINDOW.
MAX_RECORDS = 10_000
WINDOW = 900.0  # seconds a summary looks back


class RecentCosts:
    """
    The last C{limit} records (a response, a request, a transcription) of
    one process: when, whose (consumer name, C{""} anonymous), which
    model, what it cost and how many tokens it used.
    """

    def __init__(self, limit: int = MAX_RECORDS, clock: Callable[[], float] = time.time) -> None:
        self._records: deque[tuple[float, str, str, Decimal, int]] = deque(maxlen=limit)
        self._clock = clock

    def add(self, consumer: str, model: str, usd: Decimal, tokens: int) -> None:
        """One record (C{usd} 0: the model has no price)."""
        self._records.append((self._clock(), consumer, model, usd, tokens))

    def summary(self, window: float = WINDOW) -> dict[str, Any]:
        """
        The records of the last C{window} seconds summed by consumer and
        model, costliest first (JSON: C{costs}, C{total_usd}, C{window_seconds},
        C{since}: the oldest record still kept, which may be younger than the window).
        """
        now = self._clock()
        sums: dict[tuple[str, str], list[Any]] = {}
        for at, consumer, model, usd, tokens in reversed(self._records):
            if at < now - window:
                break  # oldest first in the ring: the rest are older still
            entry = sums.setdefault((consumer, model), [Decimal(0), 0, 0])
            entry[0] += usd
            entry[1] += tokens
            entry[2] += 1
        costs = [
            {"consumer": consumer or None, "model": model, "cost_usd": float(usd), "tokens": tokens, "records": records}
            for (consumer, model), (usd, tokens, records) in sums.items()
        ]
        costs.sort(key=lambda entry: (-entry["cost_usd"], -entry["tokens"]))
        return {
            "window_seconds": window, "costs": costs, "total_usd": float(sum(sum_[0] for sum_ in sums.values())),
            "since": self._records[0][0] if self._records else None,
        }
