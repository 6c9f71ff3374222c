"""
Every reach into Autobahn's and Twisted's internals (agw._internals.REACHES)
still exists in the installed versions. When an upgrade renames or removes
one, this fails with what agw used it for, before anything subtler does.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import autobahn
from twisted.trial.unittest import SynchronousTestCase

import twisted
from agw._internals import CHECKED_WITH, REACHES, Reach


def present(reach: Reach) -> bool:
    """A method or class attribute of the owner (or a base), or an attribute the owner's code uses (C{.name})."""
    module = importlib.import_module(reach.module)
    owner = getattr(module, reach.owner)
    if hasattr(owner, reach.attribute):
        return True
    sources = [inspect.getsource(klass) for klass in owner.__mro__ if klass.__module__.startswith(("autobahn", "twisted", "prometheus_client"))]
    pattern = re.compile(rf"\.{re.escape(reach.attribute)}\b")
    return any(pattern.search(source) for source in sources)


class InternalsTests(SynchronousTestCase):
    def test_every_reach_is_still_there(self) -> None:
        missing = [f"{r.module}.{r.owner}.{r.attribute} ({r.why})" for r in REACHES if not present(r)]
        self.assertEqual(
            missing, [],
            f"installed autobahn {autobahn.__version__}, Twisted {twisted.__version__}; checked with {CHECKED_WITH}",
        )

    def test_a_missing_reach_is_noticed(self) -> None:
        self.assertFalse(present(Reach("autobahn.websocket.protocol", "WebSocketProtocol", "_no_such_thing", "")))
        self.assertTrue(present(Reach("autobahn.websocket.protocol", "WebSocketProtocol", "send_queue", "")))


class FastChildTests(SynchronousTestCase):
    """FastChild's additions are prometheus_client's own: the same exposition, whatever the amounts."""

    def test_same_exposition_as_prometheus_client(self) -> None:
        import random

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

        from agw._internals import FastChild

        def metrics(registry: CollectorRegistry) -> tuple[Any, Any, Any]:
            return (
                Counter("c", "c", ["l"], registry=registry).labels("x"),
                Gauge("g", "g", ["l"], registry=registry).labels("x"),
                Histogram("h", "h", ["l"], buckets=(1, 4, 16, 64, 256), registry=registry).labels("x"),
            )

        theirs, ours = CollectorRegistry(), CollectorRegistry()
        (tc, tg, th), (oc, og, oh) = metrics(theirs), [FastChild(child) for child in metrics(ours)]
        rng = random.Random(7)
        for amount in [0, 1, 4, 4.0001, 16, 300, 1e9] + [rng.uniform(0, 400) for _ in range(200)]:
            tc.inc(amount), oc.inc(amount)
            tg.set(amount), og.set(amount)
            th.observe(amount), oh.observe(amount)
        strip = lambda text: b"\n".join(line for line in text.splitlines() if b"_created" not in line)  # noqa: E731
        self.assertEqual(strip(generate_latest(ours)), strip(generate_latest(theirs)))
