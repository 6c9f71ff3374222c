"""
The children of labelled metrics, looked up once per label set.
"""

from __future__ import annotations

from typing import Any

from agw._internals import FastChild


class MetricChildren:
    """
    C{children(metric, *values)} is C{metric.labels(*values)}, made once
    (a L{FastChild}: its C{inc}, C{set} and C{observe} without the checks).
    prometheus_client's C{labels} checks and converts its values and takes
    the metric's lock on every call, and an HTTP request records about ten
    observations. The label sets are bounded where the values are made
    (model names, methods, configured routes and consumers), so this is too.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = FastChild(metric.labels(*values))
        return child
