"""
C{policies.realtimeCalls} (agw's own, not agentgateway's): how a Realtime
route serves browser and phone calls — the longest-lived client secret it
mints, and what its call supervisors do when a call's sideband drops.
"""

from __future__ import annotations

import re

from attrs import frozen

from agw.config._guardrails import FailureMode

# What OpenAI accepts for a client secret's expires_after.seconds.
MIN_SECRET_SECONDS = 10
MAX_SECRET_SECONDS = 7200

_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@frozen
class RealtimeCalls:
    """
    A route's C{realtimeCalls}. C{max_secret_seconds} caps a client
    secret's C{expires_after.seconds} (and is the lifetime of one that asks
    for none); a sideband that drops is connected again up to
    C{reconnect_attempts} times, the first after C{reconnect_delay}
    seconds, each wait twice the one before up to C{max_reconnect_delay};
    then C{failure_mode} says what happens to the call: C{failClosed} hangs
    it up, C{failOpen} lets it go on unmetered (counted either way).
    """

    max_secret_seconds: int = 600
    reconnect_attempts: int = 3
    reconnect_delay: float = 0.25
    max_reconnect_delay: float = 5.0
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED

    def backoff(self, attempt: int) -> float:
        """The wait before reconnect C{attempt} (1, 2, ...)."""
        return min(self.reconnect_delay * 2 ** (attempt - 1), self.max_reconnect_delay)


def parse_seconds(text: str) -> float | None:
    """Seconds of a duration such as C{250ms}, C{10s} or C{1m30s}; C{None} if it is not one."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(int(number) * _SECONDS[unit] for number, unit in parts)

