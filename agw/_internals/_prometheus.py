"""
Observing prometheus_client metrics without its per-call checks. A
labelled child's C{inc} and C{observe} check that it is observable and
its amount, and a histogram looks for its bucket one bound at a time; an
HTTP request records about ten observations, on children agw made itself
(always observable, amounts agw computed). L{FastChild} does the same
additions on the child's own values, and on a C{MutexValue} (the values
of a single process) without its lock: agw observes only from the
reactor's thread, which also serves the exposition, so the lock has no
other thread to keep out.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

from agw._internals._reach import Reach

PROMETHEUS_REACHES = (
    Reach("prometheus_client.metrics", "Counter", "_value", "FastChild.inc: the child's value"),
    Reach("prometheus_client.metrics", "Gauge", "_value", "FastChild.set: the child's value"),
    Reach("prometheus_client.metrics", "Histogram", "_sum", "FastChild.observe: the child's sum"),
    Reach("prometheus_client.metrics", "Histogram", "_buckets", "FastChild.observe: the child's bucket counts"),
    Reach("prometheus_client.metrics", "Histogram", "_upper_bounds", "FastChild.observe: the bucket bounds, sorted"),
    Reach("prometheus_client.values", "MutexValue", "_value", "FastChild: a single process's value, added to without its lock"),
)


class FastChild:
    """C{child} (a labelled Counter, Gauge or Histogram) with C{inc}, C{set} and C{observe} as prometheus_client does them."""

    __slots__ = ("child", "_value", "_sum", "_buckets", "_bounds", "_unlocked")

    def __init__(self, child: Any) -> None:
        self.child = child
        self._value = getattr(child, "_value", None) if isinstance(child, (Counter, Gauge)) else None
        if isinstance(child, Histogram):
            self._sum, self._buckets, self._bounds = child._sum, child._buckets, list(child._upper_bounds)
            self._unlocked = type(self._sum) is MutexValue and all(type(bucket) is MutexValue for bucket in self._buckets)
        else:
            self._sum = None
            self._unlocked = type(self._value) is MutexValue

    def inc(self, amount: float = 1) -> None:
        value = self._value
        if value is None:
            self.child.inc(amount)
        elif self._unlocked:
            value._value += amount
        else:
            value.inc(amount)

    def set(self, value: float) -> None:
        if self._value is None:
            self.child.set(value)
        else:
            self._value.set(value)

    def observe(self, amount: float) -> None:
        if self._sum is None:
            self.child.observe(amount)
            return
        # The first bucket whose bound is at least the amount (the last bound is +Inf), as Histogram.observe finds it.
        bucket = self._buckets[bisect_left(self._bounds, amount)]
        if self._unlocked:
            self._sum._value += amount
            bucket._value += 1
        else:
            self._sum.inc(amount)
            bucket.inc(1)
