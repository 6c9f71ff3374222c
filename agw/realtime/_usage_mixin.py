"""
The usage mixin: reads Realtime server events on their way through and
reports every usage figure, and each response's start and end, as they
arrive.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from agw.metering import (
    TRANSCRIPTION,
    AudioDuration,
    TokenUsage,
    decode_event,
    error_event_id,
    might_carry_usage,
    realtime_response_usage,
    realtime_transcription_usage,
    response_id,
    session_model,
    session_transcription_model,
)

# Deltas start with their type (OpenAI serialises "type" first); only the
# head of a message is looked at, and only while a first token is awaited.
DELTA_HEAD = 96


class UsageSink(Protocol):
    """Where the mixin reports what it found (see L{agw.metering.RealtimeSession})."""

    awaiting_first_delta: bool

    def model_changed(self, model: str) -> None: ...

    def transcription_model_changed(self, model: str) -> None: ...

    def response_started(self, response_id: str | None) -> Any: ...

    def first_delta(self) -> None: ...

    def rate_limits(self) -> list[dict[str, Any]]: ...

    def request_failed(self, event_id: str) -> None: ...

    def response_finished(self, response_id: str | None, status: str | None, usage: TokenUsage | None) -> Any: ...

    def tokens_used(self, operation: str, usage: TokenUsage) -> None: ...

    def audio_used(self, operation: str, duration: AudioDuration) -> None: ...


class RealtimeUsageMixin:
    """
    Mix into a protocol that receives Realtime server events; call
    L{inspect_server_event} with each whole message. Only text messages that
    can matter (C{response.created}, C{response.done}, C{session.*}, completed
    transcriptions) are decoded.
    """

    usage_sink: UsageSink | None = None

    def server_response_refused(self, response_id: str | None, refusal: Any) -> None:
        """The server started a response a budget or limit forbids (see L{UsageSink.response_started}): stop it."""

    # Why governance ends the session (its budget is spent and the provider starts responses
    # on its own), once the message that told it has been relayed.
    ending: Any = None

    def inspect_server_event(self, payload: bytes, is_binary: bool) -> bytes:
        """Read one server message; return it as it is to be relayed (C{rate_limits.updated} gains agw's limits)."""
        sink = self.usage_sink
        if sink is None or is_binary:
            return payload
        if sink.awaiting_first_delta and b'delta"' in payload[:DELTA_HEAD]:
            sink.first_delta()
        if not might_carry_usage(payload):
            return payload
        event = decode_event(payload)
        if event is None:
            return payload
        kind = event.get("type")
        if kind == "rate_limits.updated":
            ours = sink.rate_limits()
            limits = event.get("rate_limits")
            if ours and isinstance(limits, list):
                event["rate_limits"] = [*limits, *ours]
                return json.dumps(event).encode()
        elif kind == "response.created":
            identifier = response_id(event)
            refused = sink.response_started(identifier)
            if refused is not None:
                self.server_response_refused(identifier, refused)
        elif kind == "response.done":
            response = event.get("response")
            status = response.get("status") if isinstance(response, dict) else None
            ending = sink.response_finished(
                response_id(event), status if isinstance(status, str) else None, realtime_response_usage(event)
            )
            if ending is not None:
                self.ending = ending  # ended once this response.done has gone on to the client
        elif kind == "error":
            event_id = error_event_id(event)
            if event_id is not None:
                sink.request_failed(event_id)
        elif kind in ("session.created", "session.updated"):
            model = session_model(event)
            if model is not None:
                sink.model_changed(model)
            transcription_model = session_transcription_model(event)
            if transcription_model is not None:
                sink.transcription_model_changed(transcription_model)
        else:
            transcription = realtime_transcription_usage(event)
            if isinstance(transcription, TokenUsage):
                sink.tokens_used(TRANSCRIPTION, transcription)
            elif isinstance(transcription, AudioDuration):
                sink.audio_used(TRANSCRIPTION, transcription)
        return payload
