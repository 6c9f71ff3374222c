"""
Parses C{policies.realtimeCalls} (L{RealtimeCalls}): agw's own field, not agentgateway's.
"""

from __future__ import annotations

from typing import Any

from agw.config._calls import MAX_SECRET_SECONDS, MIN_SECRET_SECONDS, RealtimeCalls, parse_seconds
from agw.config._guardrails import FailureMode
from agw.config._parsing import BaseParser, kind_of
from agw.config._yamlsource import Path


class CallsParser(BaseParser):
    """Parses C{policies.realtimeCalls} (mixed into the config parser)."""

    def realtime_calls(self, value: Any, path: Path) -> RealtimeCalls:
        if value is None:
            return RealtimeCalls()
        spec = self.mapping(value, path, "realtimeCalls")
        defaults = RealtimeCalls()
        seconds = self._duration(spec.get("maxSecretLifetime"), path + ("maxSecretLifetime",), defaults.max_secret_seconds)
        if seconds != int(seconds) or not MIN_SECRET_SECONDS <= seconds <= MAX_SECRET_SECONDS:
            raise self.fail(
                path + ("maxSecretLifetime",),
                f"expected whole seconds between 10s and 2h (what OpenAI accepts), got {spec.get('maxSecretLifetime')!r}",
            )
        sideband = self.mapping(spec.get("sideband"), path + ("sideband",), "sideband")
        where = path + ("sideband",)
        attempts = sideband.get("reconnectAttempts", defaults.reconnect_attempts)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 100:
            raise self.fail(where + ("reconnectAttempts",), f"expected a whole number from 0 to 100, got {kind_of(attempts)}")
        delay = self._duration(sideband.get("reconnectDelay"), where + ("reconnectDelay",), defaults.reconnect_delay)
        longest = self._duration(sideband.get("maxReconnectDelay"), where + ("maxReconnectDelay",), defaults.max_reconnect_delay)
        if longest < delay:
            raise self.fail(where + ("maxReconnectDelay",), "expected at least reconnectDelay")
        mode_text = self.string(sideband.get("failureMode", FailureMode.FAIL_CLOSED.value), where + ("failureMode",))
        try:
            mode = FailureMode(mode_text)
        except ValueError:
            raise self.fail(where + ("failureMode",), f"expected failClosed or failOpen, got {mode_text!r}") from None
        return RealtimeCalls(int(seconds), attempts, delay, longest, mode)

    def _duration(self, value: Any, path: Path, default: float) -> float:
        if value is None:
            return default
        seconds = parse_seconds(self.string(value, path))
        if seconds is None or not 0 < seconds <= 3600:
            raise self.fail(path, f"expected a duration between 1ms and 1h such as 250ms or 10s, got {value!r}")
        return seconds
