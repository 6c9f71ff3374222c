"""
Token usage extraction: pure functions from provider events and bodies to
L{TokenUsage}. No I/O, no Twisted; the most tested module in agw.

Cached input tokens are a subset of input tokens and reasoning tokens a
subset of output tokens: they are reported beside the totals, never added.
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import frozen

# Quoted JSON string tokens: a JSON string can only contain one of these
# unescaped if it *is* that string, so a text delta that merely mentions
# "response.done" does not match and does not get decoded.
RESPONSE_DONE = b'"response.done"'
SESSION_CREATED = b'"session.created"'
SESSION_UPDATED = b'"session.updated"'
RESPONSE_CREATED = b'"response.created"'
TRANSCRIPTION_COMPLETED = b'"conversation.item.input_audio_transcription.completed"'
# An error may answer a client's response.create: that response will never bill.
ERROR = b'"error"'
# The provider's limits, sent as a response starts: agw adds its own to them.
RATE_LIMITS_UPDATED = b'"rate_limits.updated"'
_MARKERS = (
    RESPONSE_DONE, RESPONSE_CREATED, SESSION_CREATED, SESSION_UPDATED, TRANSCRIPTION_COMPLETED, ERROR, RATE_LIMITS_UPDATED,
)
_INTERESTING_TYPES = frozenset(marker[1:-1] for marker in _MARKERS)
# OpenAI writes "type" first. When an event starts that way its type is
# known from the head, and a 48 KB audio delta is not scanned five times.
_LEADING_TYPE = re.compile(rb'\{\s*"type"\s*:\s*"([^"\\]*)"')
_HEAD = 160
EVENT_HEAD = _HEAD  # how much of an event leading_event_type needs

MODALITIES = ("text", "audio", "image")


@frozen
class TokenUsage:
    """
    Tokens one response (or request) used. C{cached_input} is C{None} when the
    provider did not report it; modality tuples hold C{(modality, tokens)}.
    """

    input: int = 0
    output: int = 0
    cached_input: int | None = None
    input_by_modality: tuple[tuple[str, int], ...] = ()
    cached_by_modality: tuple[tuple[str, int], ...] = ()
    output_by_modality: tuple[tuple[str, int], ...] = ()


@frozen
class AudioDuration:
    """Transcription billed by time rather than tokens."""

    seconds: float


def might_carry_usage(payload: bytes, start: int = 0) -> bool:
    """
    Cheap pre-filter for Realtime server events (the one in C{payload} from
    C{start}): C{False} means the message certainly matters neither for
    usage nor for the session model, so it need not be decoded.
    """
    leading = _LEADING_TYPE.match(payload, start, start + _HEAD)
    if leading is not None:
        return leading.group(1) in _INTERESTING_TYPES
    return any(payload.find(marker, start) != -1 for marker in _MARKERS)


def leading_event_type(head: bytes) -> str | None:
    """The C{type} of an event that starts with it (as OpenAI's SDKs write them), from its first bytes; else C{None}."""
    leading = _LEADING_TYPE.match(head, 0, _HEAD)
    return leading.group(1).decode("utf-8", "replace") if leading is not None else None


def error_event_id(event: dict[str, Any]) -> str | None:
    """The client C{event_id} an C{error} event answers, if it names one."""
    error = event.get("error")
    identifier = error.get("event_id") if isinstance(error, dict) else None
    return identifier if isinstance(identifier, str) else None


def response_id(event: dict[str, Any]) -> str | None:
    """The C{response.id} of a C{response.created} or C{response.done} event."""
    response = event.get("response")
    identifier = response.get("id") if isinstance(response, dict) else None
    return identifier if isinstance(identifier, str) else None


def decode_event(payload: bytes | str) -> dict[str, Any] | None:
    """A JSON object, or C{None} for anything else (not JSON, not an object, nested too deep to decode)."""
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _count(value: Any) -> int:
    # Counts must be non-negative integers; anything else counts as 0 rather
    # than poisoning a metric with a float, a string or a negative.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _details(details: Any) -> dict[str, Any]:
    return details if isinstance(details, dict) else {}


def _modalities(details: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((m, _count(details.get(f"{m}_tokens"))) for m in MODALITIES if f"{m}_tokens" in details)


def _text_remainder(total: int, details: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """
    HTTP APIs report audio (and image) tokens but not text: text is what
    the other modalities leave of the total.
    """
    audio = _count(details["audio_tokens"]) if "audio_tokens" in details else None
    image = _count(details["image_tokens"]) if "image_tokens" in details else None
    text = ("text", max(0, total - (audio or 0) - (image or 0)))
    if image is None:
        return (text,) if audio is None else (text, ("audio", audio))
    return (text, ("image", image)) if audio is None else (text, ("audio", audio), ("image", image))


def realtime_response_usage(event: dict[str, Any]) -> TokenUsage | None:
    """
    Usage of a Realtime C{response.done} (completed, cancelled or failed
    alike), or C{None} when the event is not one or carries no usage.
    """
    if event.get("type") != "response.done":
        return None
    response = event.get("response")
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    input_details = _details(usage.get("input_token_details"))
    cached_details = _details(input_details.get("cached_tokens_details"))
    return TokenUsage(
        input=_count(usage.get("input_tokens")),
        output=_count(usage.get("output_tokens")),
        cached_input=_count(input_details["cached_tokens"]) if "cached_tokens" in input_details else None,
        input_by_modality=_modalities(input_details),
        cached_by_modality=_modalities(cached_details),
        output_by_modality=_modalities(_details(usage.get("output_token_details"))),
    )


def realtime_transcription_usage(event: dict[str, Any]) -> TokenUsage | AudioDuration | None:
    """Usage of C{conversation.item.input_audio_transcription.completed}."""
    if event.get("type") != "conversation.item.input_audio_transcription.completed":
        return None
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            return AudioDuration(float(seconds))
        return None
    input_details = _details(usage.get("input_token_details"))
    return TokenUsage(
        input=_count(usage.get("input_tokens")),
        output=_count(usage.get("output_tokens")),
        input_by_modality=_modalities(input_details),
        # Transcripts are text.
        output_by_modality=(("text", _count(usage.get("output_tokens"))),) if "output_tokens" in usage else (),
    )


def session_model(event: dict[str, Any]) -> str | None:
    """The serving model named by C{session.created}/C{session.updated}."""
    if event.get("type") not in ("session.created", "session.updated"):
        return None
    session = event.get("session")
    model = session.get("model") if isinstance(session, dict) else None
    return model if isinstance(model, str) and model else None


def session_transcription_model(event: dict[str, Any]) -> str | None:
    """
    The input transcription model a C{session.created}/C{session.updated}
    configures (GA: C{session.audio.input.transcription.model}; beta:
    C{session.input_audio_transcription.model}).
    """
    if event.get("type") not in ("session.created", "session.updated"):
        return None
    session = event.get("session")
    if not isinstance(session, dict):
        return None
    audio = session.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    transcription = audio_input.get("transcription") if isinstance(audio_input, dict) else None
    if not isinstance(transcription, dict):
        transcription = session.get("input_audio_transcription")
    model = transcription.get("model") if isinstance(transcription, dict) else None
    return model if isinstance(model, str) and model else None


def _http_usage(usage: dict[str, Any], prefix: str) -> TokenUsage:
    """
    Chat completions name their counts C{prompt_tokens}/C{completion_tokens}
    (C{prefix="chat"}), the Responses API C{input_tokens}/C{output_tokens};
    the shapes are otherwise the same.
    """
    inputs, outputs = ("prompt", "completion") if prefix == "chat" else ("input", "output")
    input_details = _details(usage.get(f"{inputs}_tokens_details"))
    input_tokens, output_tokens = _count(usage.get(f"{inputs}_tokens")), _count(usage.get(f"{outputs}_tokens"))
    return TokenUsage(
        input=input_tokens,
        output=output_tokens,
        cached_input=_count(input_details["cached_tokens"]) if "cached_tokens" in input_details else None,
        input_by_modality=_text_remainder(input_tokens, input_details),
        output_by_modality=_text_remainder(output_tokens, _details(usage.get(f"{outputs}_tokens_details"))),
    )


def chat_completion_usage(body: dict[str, Any]) -> TokenUsage | None:
    """Usage of a chat completion, or of a streamed chunk that carries it."""
    usage = body.get("usage")
    return _http_usage(usage, "chat") if isinstance(usage, dict) else None


def embeddings_usage(body: dict[str, Any]) -> TokenUsage | None:
    """Usage of an embeddings response (input only)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    tokens = _count(usage.get("prompt_tokens"))
    return TokenUsage(input=tokens, input_by_modality=(("text", tokens),))


def responses_usage(body: dict[str, Any]) -> TokenUsage | None:
    """
    Usage of a Responses API object: the JSON body itself, or the
    C{response} inside a streamed C{response.completed} event.
    """
    if isinstance(body.get("response"), dict) and str(body.get("type", "")).startswith("response."):
        body = body["response"]
    usage = body.get("usage")
    return _http_usage(usage, "responses") if isinstance(usage, dict) else None


def response_model(body: dict[str, Any]) -> str | None:
    """The C{model} a provider says served an HTTP response."""
    if isinstance(body.get("response"), dict):
        body = body["response"]
    model = body.get("model")
    return model if isinstance(model, str) and model else None
