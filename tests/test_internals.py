"""
Every reach into Autobahn's and Twisted's internals (agw._internals.REACHES)
still exists in the installed versions. When an upgrade renames or removes
one, this fails with what agw used it for, before anything subtler does.
"""

from __future__ import annotations

import importlib
import inspect
import re

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
    sources = [inspect.getsource(klass) for klass in owner.__mro__ if klass.__module__.startswith(("autobahn", "twisted"))]
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
