"""
What the gateway says about a route as it builds it: the parts of its
C{promptGuard} that cannot apply to some of its traffic.
"""

from __future__ import annotations

from twisted.logger import Logger

from agw.config import Route
from agw.decisions import unguarded_streams, unguarded_types


def warn_unguarded(log: Logger, route: Route) -> None:
    """Warn (once per build) about C{route}'s traffic its C{promptGuard} does not check."""
    unguarded = unguarded_types(route.policies)
    if unguarded:
        log.warn(
            "route {route}: promptGuard checks completions, responses and Realtime only; its {types} traffic is not guarded",
            route=route.name, types=", ".join(unguarded),
        )
    if unguarded_streams(route.policies):
        log.warn(
            "route {route}: promptGuard.response reads JSON answers only; streamed (SSE) answers are not guarded"
            " unless promptGuard.streaming is Enabled",
            route=route.name,
        )
