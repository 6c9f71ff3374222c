"""
OpenAI's webhooks as agw receives them (pure): the Standard Webhooks
signature (C{webhook-id}, C{webhook-timestamp}, C{webhook-signature}: C{v1,}
and the base64 HMAC-SHA256 of C{"{id}.{timestamp}.{body}"}), the deliveries
seen lately (a replay or a retry is not acted on twice), a
C{realtime.call.incoming} event, and which of a route's SIP lines takes a
call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any

from attrs import frozen

from agw.config import SIPLine

# A webhook id is kept while its delivery could be replayed: bound what one may cost.
MAX_WEBHOOK_ID = 256
MAX_DELIVERIES = 100_000
SWEEP_INTERVAL = 60.0  # ids past their window are dropped at the next delivery this long after the last sweep
INCOMING_CALL = "realtime.call.incoming"
# The URI in a SIP address header: "Name" <sip:+1800...@host;params>;tag=..., sip:user@host, tel:+1800...
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?\s]+)", re.IGNORECASE)
# SIP's compact header forms (RFC 3261, 7.3.3) for the headers a line may name.
_COMPACT = {"t": "to", "f": "from"}

NEW, PENDING, DONE = "new", "pending", "done"


class WebhookRefused(Exception):
    """A delivery agw does not act on: C{status} (401: not OpenAI's, or too old; 400; 503) and why."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@frozen
class Delivery:
    """A delivery whose signature holds: its C{webhook-id} and C{webhook-timestamp} (Unix seconds)."""

    webhook_id: str
    timestamp: int


def verify_delivery(key: bytes, header: Callable[[str], str | None], body: bytes, now: float, tolerance: float) -> Delivery:
    """
    The L{Delivery} of a webhook request (C{header} gives a header's value
    by lower-case name) signed with C{key}, at most C{tolerance} seconds
    from C{now}; raises L{WebhookRefused} (401) otherwise. Signatures are
    compared in constant time; only C{v1} ones count.
    """
    webhook_id, stamp, signatures = header("webhook-id"), header("webhook-timestamp"), header("webhook-signature")
    if not webhook_id or not stamp or not signatures:
        raise WebhookRefused(401, "webhook-id, webhook-timestamp and webhook-signature are required", "missing_signature")
    if len(webhook_id) > MAX_WEBHOOK_ID:
        raise WebhookRefused(401, "webhook-id is too long", "invalid_signature")
    if not stamp.isascii() or not stamp.isdigit():
        raise WebhookRefused(401, "webhook-timestamp is not a Unix time", "invalid_timestamp")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise WebhookRefused(401, "webhook-timestamp is too far from now (a replay, or a clock off)", "invalid_timestamp")
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode("utf-8"), hashlib.sha256)
    mac.update(body)
    expected = base64.b64encode(mac.digest())
    matched = False
    for part in signatures.split():
        version, _, signature = part.partition(",")
        if version == "v1":
            # Every candidate is compared (no early exit): the time taken says nothing of which came close.
            matched |= hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
    if not matched:
        raise WebhookRefused(401, "the webhook signature does not match", "invalid_signature")
    return Delivery(webhook_id, timestamp)


class Deliveries:
    """
    The webhook ids seen lately, each kept until its timestamp leaves the
    tolerance window (after which a replay is refused for its age): a
    delivery is acted on once, however often it comes (OpenAI retries one
    whose answer it did not get; an attacker may replay one seen).
    """

    def __init__(self, limit: int = MAX_DELIVERIES) -> None:
        self._limit = limit
        self._seen: dict[str, tuple[str, float]] = {}  # id -> (state, until when it is kept)
        self._swept_at = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def begin(self, delivery: Delivery, tolerance: float, now: float) -> str:
        """
        C{NEW} (noted as pending: act on it), C{PENDING} (the same id is
        being acted on) or C{DONE}; raises L{WebhookRefused} (503) when too
        many are kept.
        """
        seen = self._seen.get(delivery.webhook_id)
        if seen is not None:
            return seen[0]
        if len(self._seen) >= self._limit or now - self._swept_at >= SWEEP_INTERVAL:
            self._swept_at = now
            self._seen = {key: kept for key, kept in self._seen.items() if kept[1] >= now}
        if len(self._seen) >= self._limit:
            raise WebhookRefused(503, "too many webhook deliveries at once; retry", "too_many_deliveries")
        self._seen[delivery.webhook_id] = (PENDING, delivery.timestamp + tolerance)
        return NEW

    def finish(self, delivery: Delivery) -> None:
        """It was acted on: a replay or a retry does nothing."""
        if delivery.webhook_id in self._seen:
            self._seen[delivery.webhook_id] = (DONE, self._seen[delivery.webhook_id][1])

    def forget(self, delivery: Delivery) -> None:
        """Acting on it failed: the provider's retry may act."""
        self._seen.pop(delivery.webhook_id, None)


@frozen
class IncomingCall:
    """A C{realtime.call.incoming} event: the call's id and its INVITE's headers (name, value), in order."""

    call_id: str
    sip_headers: tuple[tuple[str, str], ...]


def incoming_call(event: Any) -> IncomingCall | None:
    """
    The call a webhook event announces; C{None} for another event type;
    raises L{WebhookRefused} (400) for one that cannot be read.
    """
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise WebhookRefused(400, "expected an event object with a type", "invalid_event")
    if event["type"] != INCOMING_CALL:
        return None
    data = event.get("data")
    call_id = data.get("call_id") if isinstance(data, dict) else None
    headers = data.get("sip_headers", []) if isinstance(data, dict) else None
    if not isinstance(call_id, str) or not isinstance(headers, list):
        raise WebhookRefused(400, "expected data.call_id and data.sip_headers", "invalid_event")
    pairs = tuple(
        (header["name"], header["value"]) for header in headers
        if isinstance(header, dict) and isinstance(header.get("name"), str) and isinstance(header.get("value"), str)
    )
    return IncomingCall(call_id, pairs)


def sip_user(value: str) -> str | None:
    """The user part of the URI in a SIP address header's value (C{<sip:+18005550100@host>} -> C{+18005550100})."""
    match = _URI_USER.search(value)
    return match.group(1) if match else None


def header_values(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """The values of SIP header C{name} (any case, compact forms too), in order."""
    wanted = name.lower()
    return [value for found, value in headers if _COMPACT.get(found.lower(), found.lower()) == wanted]


def line_for(lines: tuple[SIPLine, ...], call: IncomingCall) -> SIPLine | None:
    """The first of C{lines} that takes C{call}, if any (see L{SIPLine})."""
    for line in lines:
        if line.to is not None:
            if any(sip_user(value) == line.to for value in header_values(call.sip_headers, "to")):
                return line
        elif line.header is not None:
            if line.header[1] in header_values(call.sip_headers, line.header[0]):
                return line
        else:
            return line
    return None
