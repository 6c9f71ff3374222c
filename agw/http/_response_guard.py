"""
Response guards (C{promptGuard.response}, regex) where an answer passes
through the gateway: a JSON answer is held whole, guarded and written once
(L{GuardedJSON}); a streamed one (C{promptGuard.streaming: Enabled}) is cut
into its server-sent events, each rewritten to carry only the text the
guards release (L{GuardedSSE}). What to mask or reject is
L{agw.decisions}'s decision; the usage watcher still reads the provider's
own bytes before either, so a guarded answer is metered and charged as any.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from agw.config import Guard, PromptGuard, Rejection, RouteType
from agw.decisions import (
    GuardCheck,
    GuardOutcome,
    StreamedAnswer,
    answer_slots,
    blocked_event,
    drop_logprobs,
    guard_answer,
    has_regex,
)
from agw.http._guard_calls import GuardCalls, check_guards
from agw.http._prepare import write_rejection
from agw.metering import HTTPExchange
from agw.routing import client_gone, render_error

# An event ends with a blank line (any of the three line endings SSE allows).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
# An event end is at most four bytes: a new read is searched from this far back.
_OVERLAP = 3


class AnswerGuard(Protocol):
    """What L{agw.http.BodyRelay} asks of a response guard."""

    #: The client's answer is complete before the provider's body is (a blocked stream).
    ended: bool

    def feed(self, data: bytes) -> bytes:
        """The bytes to send the client now for C{data} of the provider's body."""

    def finish(self, complete: bool) -> bytes | Deferred[bytes]:
        """The provider's body ended (C{complete}: whole): the last bytes to send (later, if a guard calls out)."""


def _record(exchange: HTTPExchange, checks: tuple[GuardCheck, ...]) -> None:
    exchange.guard_checks += tuple(("response", check.index, check.action) for check in checks)


class GuardedJSON:
    """
    A JSON answer held whole (up to C{limit} bytes), then guarded: masked
    text is re-serialised (C{Content-Length} set to match), a rejection
    replaces the answer and the headers C{provided} with it. An answer the
    guards cannot read (too large, not a JSON object) is not sent: the
    client gets a 502 (failing closed).
    """

    ended = False

    def __init__(
        self, request: Request, route_type: RouteType, guards: tuple[Guard, ...], exchange: HTTPExchange, limit: int,
        provided: tuple[bytes, ...] = (), calls: GuardCalls | None = None, headers: Mapping[str, str] | None = None,
    ) -> None:
        self._request, self._type, self._guards = request, route_type, guards
        self._exchange, self._limit, self._provided = exchange, limit, provided
        # Webhook response guards call out: the answer waits for them (with the client's headers they may be sent).
        self._calls = calls if any(guard.webhook is not None for guard in guards) else None
        self._headers = headers or {}
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        self._size += len(data)
        if self._size <= self._limit:
            self._chunks.append(data)
        else:
            self._chunks = []  # past the limit: nothing of it will be sent
        return b""

    def finish(self, complete: bool) -> bytes | Deferred[bytes]:
        if not complete or client_gone(self._request):
            return b""  # a broken answer is not sent (the forwarder drops the connection)
        raw = b"".join(self._chunks)
        self._chunks = []
        try:
            body = json.loads(raw) if self._size <= self._limit else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._unreadable()
        if self._calls is None:
            return self._decided(body, raw, guard_answer(body, self._type, self._guards))
        checking = check_guards(self._guards, answer_slots(body, self._type), "response", self._calls, self._headers)
        return checking.addCallback(lambda outcome: self._decided(body, raw, outcome))

    def _decided(self, body: dict[str, Any], raw: bytes, outcome: GuardOutcome) -> bytes:
        _record(self._exchange, outcome.checks)
        if client_gone(self._request):
            return b""
        if outcome.unavailable:
            self._replaced()
            message = "a response guard could not be checked (its service is unavailable)"
            data = render_error(self._request, 503, message, "guardrail_unavailable", "server_error")
            self._request.setHeader(b"content-length", b"%d" % len(data))
            return data
        if outcome.rejection is not None:
            return self._reject(outcome.rejection)
        if outcome.masked:
            drop_logprobs(body, self._type)
        data = json.dumps(body).encode() if outcome.masked else raw
        self._request.setHeader(b"content-length", b"%d" % len(data))
        return data

    def _replaced(self) -> None:
        """The answer is not the provider's any more: neither are its headers (but twisted.web's own)."""
        # The provider billed it: its usage still counts though the client's status is another.
        self._exchange.upstream_status = self._request.code
        for name in self._provided:
            if name.lower() not in (b"date", b"server"):
                self._request.responseHeaders.removeHeader(name)

    def _reject(self, rejection: Rejection) -> bytes:
        self._replaced()
        write_rejection(self._request, rejection)
        return b""

    def _unreadable(self) -> bytes:
        self._replaced()
        message = f"the answer could not be read by the response guards (not a JSON object of at most {self._limit} bytes)"
        data = render_error(self._request, 502, message, "response_unguardable")
        self._request.setHeader(b"content-length", b"%d" % len(data))
        return data


class GuardedSSE:
    """
    A streamed answer cut into events: each event whose text the guards
    hold or mask is sent rewritten (as one C{data:} line, its other lines
    kept), events added by the guard carry held text before the event that
    ends it; others pass byte for byte. Once a guard rejects, the stream
    ends with agentgateway's C{guardrail_blocked} error event and C{ended}
    is set: the client is done, the provider's body is still read (usage).
    """

    def __init__(self, answer: StreamedAnswer, exchange: HTTPExchange, limit: int) -> None:
        self._answer, self._exchange, self._limit = answer, exchange, limit
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer was searched for an event end
        self._named = False  # the stream names its events (event: lines): so do the events added
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        self._buffer += data
        buffer, out, start = self._buffer, [], 0
        for end in _EVENT_END.finditer(buffer, max(0, self._scanned - _OVERLAP)):
            if end.end() == len(buffer) and buffer.endswith(b"\r"):
                break  # a CR read last may be the first half of a CR LF
            out.append(self._event(bytes(buffer[start:end.start()]), end.group()))
            start = end.end()
            if self.ended:
                return b"".join(out)
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._limit:
            out.append(self._block(Rejection(body=f"an event of the answer is larger than {self._limit} bytes")))
        return b"".join(out)

    def finish(self, complete: bool) -> bytes:
        out = b""
        # A stream cut short sends nothing it held: the text that would have completed a match is missing.
        if complete and not self.ended:
            rest, self._buffer = bytes(self._buffer), bytearray()
            out = self._event(rest, b"") if rest.strip() else b""
            if not self.ended:
                out += self._encode(self._answer.end(), None, self._named)
                if self._answer.rejection is not None:
                    out += self._block(self._answer.rejection)
        _record(self._exchange, self._answer.checks)
        return out

    def _event(self, raw: bytes, end: bytes) -> bytes:
        lines = raw.splitlines()
        data = [line[6:] if line.startswith(b"data: ") else line[5:] for line in lines if line.startswith(b"data:")]
        if not data:
            return raw + end
        payload = b"\n".join(data)
        self._named = self._named or any(line.startswith(b"event:") for line in lines)
        if payload.strip() == b"[DONE]":
            flushed = self._answer.end()
            if self._answer.rejection is not None:
                return self._block(self._answer.rejection)
            return self._encode(flushed, None, self._named) + raw + end
        try:
            event = json.loads(payload)
        except ValueError:
            return raw + end  # no text this guard knows of
        if not isinstance(event, dict):
            return raw + end
        events = self._answer.event(event)
        if self._answer.rejection is not None:
            return self._block(self._answer.rejection)
        if events is None:
            return raw + end
        kept = [line for line in lines if not line.startswith(b"data:")]
        return b"".join(self._encode([e], kept if e is event else None, self._named) for e in events)

    @staticmethod
    def _encode(events: list[dict[str, Any]], kept: list[bytes] | None, named: bool) -> bytes:
        """Events as SSE: an event's own other lines (C{kept}), else an C{event:} line as the stream has them."""
        out = []
        for event in events:
            if kept is not None:
                out.extend(line + b"\n" for line in kept)
            elif named and isinstance(event.get("type"), str):
                out.append(b"event: " + event["type"].encode() + b"\n")
            # ASCII: a delta may hold half of a surrogate pair, which UTF-8 cannot encode.
            out.append(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        return b"".join(out)

    def _block(self, rejection: Rejection) -> bytes:
        self.ended = True
        self._buffer = bytearray()
        return b"data: " + json.dumps(blocked_event(rejection)).encode() + b"\n\n"


def answer_guard(
    route_type: RouteType, prompt_guard: PromptGuard, request: Request, response: IResponse, exchange: HTTPExchange,
    limit: int, calls: GuardCalls | None = None, headers: Mapping[str, str] | None = None,
) -> AnswerGuard | None:
    """
    The guard of a provider's answer, or C{None} when it passes as it is:
    no response guards it can run (regex; webhook on JSON answers, through
    C{calls}, sent C{headers}), not a completions or responses route, not a
    2xx answer with a body, or a stream while C{streaming} is Disabled (as
    agentgateway: streams are guarded only when enabled).
    """
    guards = prompt_guard.response
    webhooks = calls is not None and any(guard.webhook is not None for guard in guards)
    if route_type not in (RouteType.COMPLETIONS, RouteType.RESPONSES) or not (has_regex(guards) or webhooks):
        return None
    if not 200 <= response.code < 300 or response.code == 204 or request.method == b"HEAD":
        return None
    content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.startswith(b"text/event-stream"):
        if not prompt_guard.streaming or not has_regex(guards):
            return None  # webhook guards read whole answers only
        return GuardedSSE(StreamedAnswer(route_type, guards, prompt_guard.hold_chars), exchange, limit)
    provided = tuple(name for name, _ in response.headers.getAllRawHeaders())
    return GuardedJSON(request, route_type, guards, exchange, limit, provided, calls, headers)
