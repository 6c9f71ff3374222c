"""
Parses C{policies.realtimeCalls} (L{RealtimeCalls}): agw's own field, not agentgateway's.
"""

from __future__ import annotations

import json
from typing import Any

from agw.config._calls import (
    DEFAULT_TOLERANCE, MAX_SECRET_SECONDS, MIN_SECRET_SECONDS, RealtimeCalls, SIPCalls, SIPLine, parse_seconds, signing_key,
)
from agw.config._guardrails import FailureMode
from agw.config._model import APIKeyPolicy
from agw.config._parsing import BaseParser, kind_of
from agw.config._secret import Secret
from agw.config._yamlsource import Path


class CallsParser(BaseParser):
    """Parses C{policies.realtimeCalls} (mixed into the config parser)."""

    def realtime_calls(self, value: Any, path: Path, api_key: APIKeyPolicy | None = None) -> RealtimeCalls:
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
        sip = self._sip(spec["sip"], path + ("sip",), api_key) if spec.get("sip") is not None else None
        return RealtimeCalls(int(seconds), attempts, delay, longest, mode, sip)

    def _sip(self, value: Any, path: Path, api_key: APIKeyPolicy | None) -> SIPCalls:
        spec = self.mapping(value, path, "sip")
        secret = self.string(spec.get("webhookSecret"), path + ("webhookSecret",))
        try:
            signing_key(secret)
        except ValueError as e:
            raise self.fail(path + ("webhookSecret",), str(e)) from None  # the reason, never the secret
        tolerance = self._duration(spec.get("timestampTolerance"), path + ("timestampTolerance",), DEFAULT_TOLERANCE)
        if not 10 <= tolerance <= 3600:
            raise self.fail(path + ("timestampTolerance",), "expected a duration from 10s to 1h (default 5m)")
        consumers = {key.name for key in api_key.keys if key.name is not None} if api_key is not None else set()
        lines = self.items(spec.get("lines"), path + ("lines",), lambda line, where, _: self._line(line, where, consumers), required=True)
        if not lines:
            raise self.fail(path + ("lines",), "expected at least one line (else every call is rejected)")
        return SIPCalls(Secret(secret), lines, tolerance)

    def _line(self, value: Any, path: Path, consumers: set[str]) -> SIPLine:
        line = self.mapping(value, path, "sipLine")
        to = self.string(line.get("to"), path + ("to",), optional=True)
        header = None
        if line.get("header") is not None:
            match = self.mapping(line["header"], path + ("header",), "sipHeaderMatch")
            name = self.string(match.get("name"), path + ("header", "name"))
            header = (name, self.string(match.get("value"), path + ("header", "value")))
        if to is not None and header is not None:
            raise self.fail(path, "expected one of to and header (neither: every call)")
        consumer = self.string(line.get("consumer"), path + ("consumer",), optional=True)
        if consumer is not None and consumer not in consumers:
            raise self.fail(path + ("consumer",), f"no key of this route's apiKey has metadata.name {consumer!r}")
        session = self.mapping(line.get("session"), path + ("session",), "session", allowed=_ANY_FIELD)
        if not isinstance(session.get("model"), str) or not session["model"]:
            raise self.fail(path + ("session", "model"), "expected the model the call is answered with")
        if session.get("type", "realtime") != "realtime":
            raise self.fail(path + ("session", "type"), "expected realtime (agw answers phone calls with Realtime sessions)")
        try:
            text = json.dumps(session)
        except (TypeError, ValueError):
            raise self.fail(path + ("session",), "expected JSON values (strings, numbers, lists, mappings)") from None
        return SIPLine(text, to, header, consumer)

    def _duration(self, value: Any, path: Path, default: float) -> float:
        if value is None:
            return default
        seconds = parse_seconds(self.string(value, path))
        if seconds is None or not 0 < seconds <= 3600:
            raise self.fail(path, f"expected a duration between 1ms and 1h such as 250ms or 10s, got {value!r}")
        return seconds


class _Anything:
    """Every field name: a session configuration is OpenAI's, passed on as it is."""

    def __contains__(self, name: object) -> bool:
        return True


_ANY_FIELD: Any = _Anything()
