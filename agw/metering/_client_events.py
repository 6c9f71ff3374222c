"""
What the relay reads of a client's Realtime events: their type (for
governance: is it a C{response.create}?) and the C{event_id} a refusal
names. Pure functions, like the usage parser beside them.

JSON lets an object repeat a key. Python's decoder keeps the last
C{"type"}; a provider's may act on the first, or on another. So an event
that names its type more than once is taken as any of them: governance
asks whether I{any} is C{response.create} (L{client_event_types}), and the
pass-through reads such an event whole (L{sole_event_type}).
"""

from __future__ import annotations

import json
from typing import Any

from agw.metering._usage import _HEAD, _LEADING_TYPE, decode_event, leading_event_type


def sole_event_type(payload: bytes | bytearray) -> str | None:
    """
    The C{type} of an event that starts with it and cannot name another;
    C{None} when its head does not say its type, or when a second C{type}
    key may follow: a later C{"type"} token anywhere (in a nested object or
    as a string value too: erring towards reading the event whole), or any
    backslash (an escaped key such as C{"\\u0074ype"} is C{"type"} to a
    decoder). Cheap on audio appends: base64 holds neither quotes nor
    backslashes, so it is crossed by a few C{memchr}-speed finds.
    """
    leading = _LEADING_TYPE.match(payload, 0, _HEAD)
    if leading is None or b"\\" in payload:
        return None
    find = payload.find
    quote = find(b'"', leading.end())
    while quote != -1:
        if payload.startswith(b'type"', quote + 1):
            return None
        quote = find(b'"', quote + 1)
    return leading.group(1).decode("utf-8", "replace")


class _Members(list):  # type: ignore[type-arg]
    """An object's members in order, repeated keys kept (what json's C{object_pairs_hook} is given)."""


def client_event_types(payload: bytes) -> tuple[str, ...]:
    """
    Every C{type} at the top level of a client event, in order (C{()} for
    anything but a JSON object, or one without a string C{type}). From the
    head alone when the event starts with its type and cannot name another
    (L{sole_event_type}: every audio append); otherwise the whole event is
    decoded, keeping repeated keys. Governance: C{"response.create" in
    client_event_types(payload)}.
    """
    kind = sole_event_type(payload)
    if kind is not None:
        return (kind,)
    try:
        event = json.loads(payload, object_pairs_hook=_Members)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ()
    if not isinstance(event, _Members):
        return ()
    return tuple(value for key, value in event if key == "type" and isinstance(value, str))


def client_event_type(payload: bytes) -> str | None:
    """
    The C{type} of a client event. Read from the head when the event starts
    with it (as every OpenAI SDK writes events, audio appends included);
    otherwise the whole message is decoded, so a client that writes
    C{"type"} last is not missed. Of a repeated C{type}, only one is seen:
    governance uses L{client_event_types}.
    """
    leading = leading_event_type(payload)
    if leading is not None:
        return leading
    event = decode_event(payload)
    kind = event.get("type") if event is not None else None
    return kind if isinstance(kind, str) else None


def client_event_id(payload: bytes) -> str | None:
    """The C{event_id} a client gave an event, if any (decodes the whole message: call it for small events only)."""
    event = decode_event(payload)
    identifier: Any = event.get("event_id") if event is not None else None
    return identifier if isinstance(identifier, str) else None
