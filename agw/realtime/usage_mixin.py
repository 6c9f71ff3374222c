"""
The usage mixin: reads Realtime server events on their way through and
records every usage report as it arrives.
"""

from __future__ import annotations

from typing import Protocol

from agw.usage import (
    AudioDuration,
    TokenUsage,
    decode_event,
    might_carry_usage,
    realtime_response_usage,
    realtime_transcription_usage,
    session_model,
)

CHAT = "chat"  # agentgateway's operation name for Realtime responses
TRANSCRIPTION = "transcription"


class UsageSink(Protocol):
    """Where the mixin reports what it found (see L{agw.realtime.session})."""

    def model_changed(self, model: str) -> None: ...

    def tokens_used(self, operation: str, usage: TokenUsage) -> None: ...

    def audio_used(self, operation: str, duration: AudioDuration) -> None: ...


class RealtimeUsageMixin:
    """
    Mix into a protocol that receives Realtime server events; call
    L{inspect_server_event} with each whole message. Only text messages that
    can carry usage or the session's model are decoded.
    """

    usage_sink: UsageSink | None = None

    def inspect_server_event(self, payload: bytes, is_binary: bool) -> None:
        sink = self.usage_sink
        if sink is None or is_binary or not might_carry_usage(payload):
            return
        event = decode_event(payload)
        if event is None:
            return
        model = session_model(event)
        if model is not None:
            sink.model_changed(model)
            return
        usage = realtime_response_usage(event)
        if usage is not None:
            sink.tokens_used(CHAT, usage)
            return
        transcription = realtime_transcription_usage(event)
        if isinstance(transcription, TokenUsage):
            sink.tokens_used(TRANSCRIPTION, transcription)
        elif isinstance(transcription, AudioDuration):
            sink.audio_used(TRANSCRIPTION, transcription)
