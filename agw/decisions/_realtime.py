"""
Where the text is in Realtime events, both ways: the client events guards
read (typed items, instructions, a response's own input), the provider's
text deltas (one stream per response, item and content part), the events
that repeat a whole text once it is done, and the session's instructions
that C{prompts} enrich. Pure: events are parsed dicts, changed in place.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from agw.config import DEFAULT_REJECTION, Prompts, Rejection, Scope
from agw.decisions._apply import Slot, item_slots

# Client events whose text the request guards read.
GUARDED_CLIENT_EVENTS = frozenset({"conversation.item.create", "session.update", "response.create"})

# A completed transcript of the user's audio: read by the request guards (it cannot be rewritten upstream).
INPUT_TRANSCRIPT = "conversation.item.input_audio_transcription.completed"

# Provider events carrying a piece of a response's text (GA names, then beta).
OUTPUT_DELTAS = frozenset({
    "response.output_text.delta", "response.output_audio_transcript.delta",
    "response.text.delta", "response.audio_transcript.delta",
})

# Provider events that end one text stream (their whole text is in them too).
OUTPUT_DONE = frozenset({
    "response.output_text.done", "response.output_audio_transcript.done",
    "response.text.done", "response.audio_transcript.done",
})

# Provider events that repeat a response's texts whole: masked like the deltas were.
OUTPUT_WHOLE = frozenset({
    "response.content_part.added", "response.content_part.done", "response.output_item.added",
    "response.output_item.done", "conversation.item.added", "conversation.item.done", "conversation.item.created",
    "conversation.item.retrieved", "response.done",
}) | OUTPUT_DONE


def client_event_slots(event: dict[str, Any]) -> list[Slot]:
    """The text of a client event the request guards read (see L{GUARDED_CLIENT_EVENTS})."""
    kind = event.get("type")
    slots: list[Slot] = []
    if kind == "conversation.item.create":
        item = event.get("item")
        if isinstance(item, dict):
            slots.extend(item_slots(item))
    elif kind in ("session.update", "response.create"):
        holder = event.get("session" if kind == "session.update" else "response")
        if isinstance(holder, dict):
            if isinstance(holder.get("instructions"), str):
                slots.append(Slot(holder, "instructions", Scope.SYSTEM_PROMPT, "system"))
            items = holder.get("input")
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict):
                    slots.extend(item_slots(item))
    return slots


def transcript_slots(event: dict[str, Any]) -> list[Slot]:
    """A completed input transcript, as the user's message."""
    return [Slot(event, "transcript", Scope.MESSAGES)] if isinstance(event.get("transcript"), str) else []


def stream_key(event: dict[str, Any]) -> tuple[Any, ...]:
    """Which text stream a delta or done event belongs to: its response, item and content part."""
    return event.get("response_id"), event.get("item_id"), event.get("content_index", 0)


def response_of(event: dict[str, Any]) -> str | None:
    """The id of the response a provider event belongs to, if it names one."""
    identifier = event.get("response_id")
    if isinstance(identifier, str):
        return identifier
    response = event.get("response")
    if isinstance(response, dict) and isinstance(response.get("id"), str):
        return response["id"]  # type: ignore[no-any-return]
    return None


def _text_holders(value: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """Every C{text}/C{transcript} string under an item, a content part or a response's output."""
    if isinstance(value, dict):
        for key in ("text", "transcript"):
            if isinstance(value.get(key), str):
                yield value, key
        for key in ("content", "output", "part", "item", "response"):
            child = value.get(key)
            if isinstance(child, dict | list):
                yield from _text_holders(child)
    elif isinstance(value, list):
        for entry in value:
            yield from _text_holders(entry)


def whole_text_holders(event: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The places in a provider event (see L{OUTPUT_WHOLE}) that hold a whole text of a response."""
    if event.get("type") in OUTPUT_DONE:
        return [(event, key) for key in ("text", "transcript") if isinstance(event.get(key), str)]
    holders: list[tuple[dict[str, Any], str]] = []
    for key in ("part", "item", "response"):
        if isinstance(event.get(key), dict):
            holders.extend(_text_holders(event[key]))
    return holders


def enriched_instructions(instructions: str | None, prompts: Prompts) -> str | None:
    """
    A session's instructions with C{prompts} around them (each message's
    content, in order, a blank line apart): a Realtime session has one
    system text, not a list of messages. C{None} if there is nothing to add.
    """
    if not prompts.prepend and not prompts.append:
        return None
    parts = [m.content for m in prompts.prepend] + ([instructions] if instructions else []) + [m.content for m in prompts.append]
    return "\n\n".join(parts)


def encode(event: dict[str, Any]) -> bytes:
    """An event as compact JSON."""
    return json.dumps(event, separators=(",", ":")).encode()


def agw_event_id() -> str:
    """An C{event_id} for an event agw itself sends on a session (never one a client or the provider could have chosen)."""
    return f"event_agw_{uuid.uuid4().hex[:20]}"


def error_event(error: dict[str, Any]) -> bytes:
    """An C{error} event of agw's own to a client, carrying C{error} (OpenAI's error fields)."""
    return encode({"type": "error", "event_id": agw_event_id(), "error": error})


def guardrail_error(message: str, event_id: str | None = None, **extra: Any) -> bytes:
    """The error event a client gets for what a guard blocked (agentgateway's type and code, and the client's event_id)."""
    error = {"type": "guardrail_blocked", "code": "guardrail_intervention", "message": message, "param": None, "event_id": event_id}
    return error_event({**error, **extra})


def rejection_text(rejection: Rejection | None) -> str:
    """What the client is told a guard blocked: the rejection's body, else agentgateway's text."""
    return rejection.body if rejection is not None and rejection.body is not None else DEFAULT_REJECTION


def item_role(event: dict[str, Any]) -> Any:
    """The role of the item an event carries (C{None} if it carries none)."""
    item = event.get("item")
    return item.get("role") if isinstance(item, dict) else None
