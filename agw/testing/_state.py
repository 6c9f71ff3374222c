"""
What the fake provider knows and remembers, shared by its Realtime and HTTP
endpoints: the scripts a test sets, the misbehaviours it asks for, and the
ledger of everything billed.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import attrs
from attrs import define, field, frozen
from twisted.internet.defer import Deferred

REALTIME_MODEL = "gpt-realtime-2025-08-28"


@frozen
class Handshake:
    """What the fake saw of one Realtime handshake (lower-case header names)."""

    uri: str
    headers: dict[str, str]
    protocols: tuple[str, ...]
    extensions: tuple[str, ...]


@frozen
class Refusal:
    """
    A scripted answer to the next handshake instead of C{101}; with
    C{chunked} the body goes out in chunks of C{chunk_size} bytes, each in
    its own write, as a provider behind a streaming proxy would send it.
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    chunked: bool = False
    chunk_size: int = 7


@define
class Billed:
    """One usage report the fake sent, as OpenAI would bill it."""

    operation: str  # "chat" (response.done) or "transcription"
    model: str
    usage: dict[str, Any] = field(factory=dict)
    session: str | None = None  # the Realtime session's id (session.created's), None for HTTP


def response_usage(number: int, audio: bool) -> dict[str, Any]:
    """
    The deterministic, GA-shaped usage of the fake's C{number}th response:
    text and audio input, a cached subset from the second response on.
    """
    text_in, audio_in = 20 + 3 * number, (40 + 5 * number if audio else 0)
    cached_text, cached_audio = (8 * (number % 3), (16 if audio and number % 2 else 0))
    text_out, audio_out = 5 + number, (30 + 2 * number if audio else 0)
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


@frozen
class HTTPRequest:
    """What the fake saw of one HTTP request (lower-case header names)."""

    method: str
    uri: str
    headers: dict[str, str]
    body_size: int
    body_sha256: str
    json: Any


_HANG = Refusal(0)


class FakeState:
    """The state of a L{agw.testing.FakeOpenAI} (see there)."""

    def __init__(self, realtime_model: str = REALTIME_MODEL) -> None:
        self.realtime_model = realtime_model
        self.transcription_model = "gpt-4o-transcribe"
        self.transcription_usage: dict[str, Any] | None = None
        # Seconds between a response's first deltas and its response.done;
        # within them a response.cancel ends it as "cancelled".
        self.response_delay = 0.0
        # Seconds between a response.cancel and the cancelled response.done.
        self.cancel_delay = 0.0
        # Seconds between a client's response.create and response.created.
        self.created_delay = 0.0
        # Server VAD: each input_audio_buffer.commit starts a response on its own.
        self.server_vad = False
        # The text of every answer (HTTP and Realtime), in the deltas it streams in.
        self.reply_deltas: tuple[str, ...] = ("Hello", "!")
        # The text of the next Realtime responses, one entry each, before reply_deltas applies.
        self.replies: list[tuple[str, ...]] = []
        # Send each input transcript after the response server VAD starts (as OpenAI usually does), not before.
        self.transcript_after_response = False
        # Frame each Realtime response's deltas with its item and content part events and their
        # done events (whole text), and give response.done its output, as OpenAI does.
        self.output_items = False
        # POST /v1/moderations flags a text that holds one of these (case-insensitive).
        self.moderation_flag_words: set[str] = set()
        # The transcript of each committed input audio buffer (sent when transcription is on).
        self.transcript = "hi"
        # Write "type" last in every server event (OpenAI writes it first).
        self.type_last = False
        self.ledger: list[Billed] = []
        self.handshakes: list[Handshake] = []
        self.received: list[bytes] = []
        self.streamed = 0  # bytes sent by test.stream
        # Set to False to keep only a count of received bytes (for volume tests).
        self.keep_received = True
        self.received_bytes = 0
        self.sessions: list[Any] = []  # FakeRealtimeProtocol
        self.closes: list[tuple[int | None, str | None]] = []
        # With record_wire: the bytes each Realtime session received after its handshake, as they came.
        self.record_wire = False
        self.wire: list[bytes] = []
        # Keep each session's TCP connection open after the close handshake
        # until its release() (a provider slow to hang up).
        self.hold_tcp = False
        self.ids = itertools.count(1)
        self.response_numbers = itertools.count(1)
        self._refusals: list[Refusal] = []
        self.http_requests: list[HTTPRequest] = []
        self.connections = 0  # TCP connections accepted (HTTP and Realtime)
        self.http_abandoned: list[bytes] = []
        self.stream_gate: Deferred[None] | None = None
        self._http_scripts: list[tuple[int, bytes]] = []
        self._billing_held: list[Deferred[None]] | None = None

    def hold_billing(self) -> None:
        """
        Hold every answer that would bill from now on, until
        L{release_billing}: a Realtime response stays mid-stream (no
        C{response.done}), an HTTP completion is not answered yet. A process
        killed while holding has sent nothing its L{ledger} does not hold.
        """
        if self._billing_held is None:
            self._billing_held = []

    def release_billing(self) -> None:
        """Let the answers L{hold_billing} held go on (and the next ones)."""
        held, self._billing_held = self._billing_held or [], None
        for waiting in held:
            waiting.callback(None)

    def billing_held(self) -> Deferred[None] | None:
        """C{None}, or, while billing is held, a Deferred that fires at its release (one per waiter)."""
        if self._billing_held is None:
            return None
        waiting: Deferred[None] = Deferred()
        self._billing_held.append(waiting)
        return waiting

    def refuse(
        self, status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] | None = None, chunked: bool = False,
    ) -> None:
        """Answer the next Realtime handshake with C{status} and C{body} (in chunks if C{chunked})."""
        refusal = Refusal(status, body, chunked=chunked)
        self._refusals.append(refusal if headers is None else attrs.evolve(refusal, headers=headers))

    def hang(self) -> None:
        """Accept the next Realtime connection and never answer its handshake."""
        self._refusals.append(_HANG)

    def fail_http(self, status: int, body: bytes = b'{"error": {"message": "scripted", "type": "server_error", "code": null}}') -> None:
        """Answer the next HTTP request with C{status} and C{body}."""
        self._http_scripts.append((status, body))

    def hang_http(self) -> None:
        """Never answer the next HTTP request; its URI goes to L{http_abandoned} when the caller gives up."""
        self._http_scripts.append((0, b""))

    def take_http_script(self) -> tuple[int, bytes] | None:
        return self._http_scripts.pop(0) if self._http_scripts else None

    def take_refusal(self) -> Refusal | None:
        return self._refusals.pop(0) if self._refusals else None

    def billed(self) -> dict[tuple[str, str, str], int]:
        """Ledger totals by C{(operation, model, token type)}, token types as agw's metric names them."""
        totals: dict[tuple[str, str, str], int] = defaultdict(int)
        for entry in self.ledger:
            usage = entry.usage
            details = usage.get("input_token_details") or {}
            totals[(entry.operation, entry.model, "input")] += usage.get("input_tokens", 0)
            totals[(entry.operation, entry.model, "output")] += usage.get("output_tokens", 0)
            if "cached_tokens" in details:
                totals[(entry.operation, entry.model, "input_cache_read")] += details["cached_tokens"]
        return dict(totals)

