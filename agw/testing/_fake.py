"""
L{FakeOpenAI}: the fake upstream's public face.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import attrs

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.web.resource import Resource
from twisted.web.server import Site

from agw.testing._http import FakeHTTPAPI, FakeV1, HTTPRequest
from agw.testing._realtime import _HANG, Billed, FakeRealtimeFactory, FakeRealtimeProtocol, Handshake, Refusal

REALTIME_MODEL = "gpt-realtime-2025-08-28"


class FakeOpenAI:
    """
    A fake OpenAI API for tests, in-process on Twisted: serve L{resource}
    in a L{Site}, or L{listen} on loopback and point agw's C{hostOverride}
    at it.

    Every usage figure it reports is in L{ledger}; L{handshakes} and
    L{received} show what reached it; L{refuse} and L{hang} script the next
    Realtime handshake; L{sessions} are the open Realtime connections (call
    C{close(code, reason)} on one to close it from the provider's side, or
    C{transport.abortConnection()} to vanish); L{closes} holds the close
    code and reason each session ended with, as the fake saw them.

    HTTP: L{http_requests} records each request (headers, body size and
    hash); L{fail_http} and L{hang_http} script the next answer; setting
    L{stream_gate} to a Deferred holds the next streamed completion after
    its first chunk until it fires. Every HTTP answer sets a cookie.
    """

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
        # Write "type" last in every server event (OpenAI writes it first).
        self.type_last = False
        self.ledger: list[Billed] = []
        self.handshakes: list[Handshake] = []
        self.received: list[bytes] = []
        self.streamed = 0  # bytes sent by test.stream
        # Set to False to keep only a count of received bytes (for volume tests).
        self.keep_received = True
        self.received_bytes = 0
        self.sessions: list[FakeRealtimeProtocol] = []
        self.closes: list[tuple[int | None, str | None]] = []
        # Keep each session's TCP connection open after the close handshake
        # until its release() (a provider slow to hang up).
        self.hold_tcp = False
        self.ids = itertools.count(1)
        self.response_numbers = itertools.count(1)
        self._refusals: list[Refusal] = []
        self.http_requests: list[HTTPRequest] = []
        self.http_abandoned: list[bytes] = []
        self.stream_gate: Deferred[None] | None = None
        self._http_scripts: list[tuple[int, bytes]] = []

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

    def resource(self, reactor: Any = None) -> Resource:
        """The fake's twisted.web tree: C{/v1/realtime} and the HTTP API under C{/v1}."""
        if reactor is None:
            from twisted.internet import reactor
        root = Resource()
        realtime = WebSocketResource(FakeRealtimeFactory(self, reactor))
        root.putChild(b"v1", FakeV1(realtime, FakeHTTPAPI(self)))
        return root

    def listen(
        self, reactor: Any, port: int = 0, interface: str = "127.0.0.1", tls: CertificateOptions | None = None,
    ) -> Deferred[IListeningPort]:
        """
        Listen on loopback (an ephemeral port by default); over TLS with
        C{tls} (see L{agw.testing.TestCA.server_options}).
        """
        site = Site(self.resource(reactor), reactor=reactor)
        site.noisy = False
        if tls is not None:
            return SSL4ServerEndpoint(reactor, port, tls, interface=interface).listen(site)
        return TCP4ServerEndpoint(reactor, port, interface=interface).listen(site)
