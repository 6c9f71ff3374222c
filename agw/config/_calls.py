"""
C{policies.realtimeCalls} (agw's own, not agentgateway's): how a Realtime
route serves browser and phone calls — the longest-lived client secret it
mints, what its call supervisors do when a call's sideband drops, and (with
C{sip}) which phone calls it answers, for whom and how.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from attrs import frozen

from agw.config._guardrails import FailureMode
from agw.config._secret import Secret

# What OpenAI accepts for a client secret's expires_after.seconds.
MIN_SECRET_SECONDS = 10
MAX_SECRET_SECONDS = 7200

_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


# What Standard Webhooks (and OpenAI's SDKs) allow a delivery's timestamp to be off by, by default.
DEFAULT_TOLERANCE = 300.0
WEBHOOK_SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """
    The HMAC key of a webhook signing secret: the bytes after C{whsec_},
    base64-decoded (as OpenAI's SDKs read it), or the text itself; raises
    L{ValueError} (whose message never holds the secret).
    """
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after its prefix") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


@frozen
class SIPLine:
    """
    One entry of C{realtimeCalls.sip.lines}: which incoming calls it takes
    (C{to}: the dialed number, the user part of the C{To} header's URI;
    C{header}: a SIP header's name and exact value; neither: every call),
    the consumer they are billed to (a C{metadata.name} of the route's
    C{apiKey} keys; C{None}: anonymous) and the session they are accepted
    with (JSON text of an object with at least a C{model}).
    """

    session: str
    to: str | None = None
    header: tuple[str, str] | None = None
    consumer: str | None = None

    @property
    def session_config(self) -> dict[str, Any]:
        """The session, decoded afresh (a caller may change its copy)."""
        return json.loads(self.session)  # type: ignore[no-any-return]

    @property
    def model(self) -> str:
        return self.session_config["model"]  # type: ignore[no-any-return]


@frozen(repr=False)
class SIPCalls:
    """
    C{realtimeCalls.sip}: phone calls through OpenAI's C{realtime.call.incoming}
    webhook. C{secret} signs the webhooks (never shown); a delivery whose
    C{webhook-timestamp} is more than C{tolerance} seconds off is refused;
    C{lines} map calls to consumers and sessions, the first that matches
    wins (a call no line takes is rejected).
    """

    secret: Secret
    lines: tuple[SIPLine, ...] = ()
    tolerance: float = DEFAULT_TOLERANCE

    def __repr__(self) -> str:
        return f"SIPCalls(secret=<redacted>, lines={self.lines!r}, tolerance={self.tolerance!r})"


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
    C{sip}: the route answers phone calls (L{SIPCalls}), if set.
    """

    max_secret_seconds: int = 600
    reconnect_attempts: int = 3
    reconnect_delay: float = 0.25
    max_reconnect_delay: float = 5.0
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED
    sip: SIPCalls | None = None

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

