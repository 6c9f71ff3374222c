"""
agentgateway's C{localRateLimit}: token buckets per route, in this process.

A bucket starts full and gains C{tokensPerFill} at the end of each
C{fillInterval} (in whole steps, as agentgateway). A C{requests} bucket
spends one per request: each HTTP request, each Realtime
C{response.create}. A C{tokens} bucket admits a request while it is not
empty and is charged each response's input plus output tokens when the
response is done, so it can go below zero (the next requests wait).

With C{--workers N} each worker holds C{1/N} of every bucket (its size and
its fill, rounded up), so the host as a whole admits the configured rate;
traffic spread unevenly over the workers can be refused a little early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from agw.config import LocalRateLimit


class TokenBucket:
    """One C{localRateLimit} entry (scaled by C{share} for one of several workers)."""

    def __init__(self, spec: LocalRateLimit, clock: Callable[[], float], share: float = 1.0) -> None:
        self.spec = spec
        self.capacity = max(1, math.ceil(spec.max_tokens * share))
        self._per_fill = max(1, math.ceil(spec.tokens_per_fill * share))
        self._clock = clock
        self._tokens = self.capacity
        self._filled_at = clock()

    @property
    def kind(self) -> str:
        return self.spec.kind

    def _refill(self) -> float:
        now = self._clock()
        steps = int((now - self._filled_at) // self.spec.fill_interval)
        if steps > 0:
            self._tokens = min(self.capacity, self._tokens + steps * self._per_fill)
            self._filled_at += steps * self.spec.fill_interval
        return now

    @property
    def remaining(self) -> int:
        self._refill()
        return max(0, self._tokens)

    @property
    def reset_seconds(self) -> float:
        """Seconds until the next fill."""
        now = self._refill()
        return round(self._filled_at + self.spec.fill_interval - now, 3)

    def admit(self) -> bool:
        """Whether a request may go now; a C{requests} bucket spends one for it."""
        self._refill()
        if self._tokens < 1:
            return False
        if self.kind == "requests":
            self._tokens -= 1
        return True

    def charge(self, tokens: int) -> None:
        """A response used C{tokens} (C{tokens} buckets only)."""
        if self.kind == "tokens":
            self._refill()
            self._tokens -= tokens

    def as_rate_limit(self) -> dict[str, Any]:
        """This bucket as an entry of a Realtime C{rate_limits.updated} event."""
        return {
            "name": f"agw.localRateLimit.{self.kind}", "limit": self.capacity, "remaining": self.remaining,
            "reset_seconds": self.reset_seconds,
        }


class RouteLimits:
    """The C{localRateLimit} buckets of one route."""

    def __init__(self, specs: Sequence[LocalRateLimit], clock: Callable[[], float], share: float = 1.0) -> None:
        self.buckets = [TokenBucket(spec, clock, share) for spec in specs]

    def admit(self) -> TokenBucket | None:
        """Admit one request to every bucket; the first bucket that refuses it, if any (nothing is spent then)."""
        empty = self.empty()
        if empty is None:
            for bucket in self.buckets:
                bucket.admit()
        return empty

    def empty(self) -> TokenBucket | None:
        """The first empty bucket, if any (nothing is spent)."""
        return next((bucket for bucket in self.buckets if bucket.remaining < 1), None)

    def charge(self, tokens: int) -> None:
        for bucket in self.buckets:
            bucket.charge(tokens)

    def rate_limits(self) -> list[dict[str, Any]]:
        return [bucket.as_rate_limit() for bucket in self.buckets]
