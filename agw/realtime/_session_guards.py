"""
L{session_guard}: the guard a Realtime session gets from its route
(C{promptGuard}, C{prompts}), with its checks counted in the route's
metric and written to the access log, and guard backends (webhook,
moderation) run through the gateway's C{guard_calls}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred

from agw.config import Guard
from agw.decisions import ALLOW, GuardOutcome, Slot
from agw.metering import RealtimeSession, guard_fields
from agw.realtime._guarding import GuardRunner, SessionGuard, regex_runner
from agw.routing import RouteContext, guard_headers


def session_guard(context: RouteContext, session: RealtimeSession, client_headers: Mapping[str, str]) -> SessionGuard | None:
    """
    The guard of a session on C{context}'s route (C{None} without
    promptGuard or prompts): it counts and logs each check. Webhook and
    moderation guards run through the gateway's C{guard_calls}, with the
    handshake's C{client_headers} a webhook may be sent.
    """
    policies = context.policies
    if not policies.prompt_guard and not (policies.prompts.prepend or policies.prompts.append):
        return None
    runner: GuardRunner = regex_runner
    calls = context.guard_calls
    if calls is not None and any(guard.regex is None for guard in policies.prompt_guard.request):
        headers = guard_headers(((name.lower(), value) for name, value in client_headers.items()), policies)

        def calling(guards: tuple[Guard, ...], slots: list[Slot], phase: str) -> Deferred[GuardOutcome]:
            return calls.check(guards, slots, phase, headers)

        runner = calling

    # The first check of each action that did something: all guard_fields reads for the session's record and span
    # (a list of every one would grow with the session).
    first: dict[str, tuple[str, int, str]] = {}

    def record(phase: str, index: int, action: str, where: dict[str, Any]) -> None:
        context.metrics.record_guardrail(context.labels, phase, action, session.who)
        if action != ALLOW:
            if action not in first:
                first[action] = (phase, index, action)
                session.guard_fields = guard_fields(tuple(first.values()))
            context.access_log.emit(
                "realtime.guardrail", context.labels, None, **{
                    "agw.guardrail.action": action, "agw.guardrail.guard": f"promptGuard.{phase}[{index}]", **where,
                    **session.who.log_fields,
                },
            )

    return SessionGuard(policies, record, runner, context.reactor)
