"""
Response bodies on their way to the client: written as they arrive, with
back pressure, and watched for usage without holding them whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import Request

from agw.usage import TokenUsage, response_model
from agw.web import client_gone

UsageExtractor = Callable[[dict[str, Any]], TokenUsage | None]
# (usage or None, response model or None)
UsageReport = Callable[[TokenUsage | None, str | None], None]


class JSONWatcher:
    """Keeps a JSON body (up to C{limit} bytes) and reports its usage at the end."""

    def __init__(self, extract: UsageExtractor, report: UsageReport, limit: int) -> None:
        self._extract, self._report, self._limit = extract, report, limit
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= self._limit:
            self._chunks.append(data)

    def finish(self) -> None:
        if self._size > self._limit:
            self._report(None, None)
            return
        try:
            body = json.loads(b"".join(self._chunks))
        except ValueError:
            body = None
        if isinstance(body, dict):
            self._report(self._extract(body), response_model(body))
        else:
            self._report(None, None)


class SSEWatcher:
    """
    Reads server-sent events as they pass and decodes only the C{data:}
    lines that can carry usage (the final chunk of a chat completion stream,
    C{response.completed}); the model is taken from the first event.
    """

    _MAX_LINE = 1024 * 1024

    def __init__(self, extract: UsageExtractor, report: UsageReport) -> None:
        self._extract, self._report = extract, report
        self._partial = b""
        self._usage: TokenUsage | None = None
        self._model: str | None = None

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self._MAX_LINE:
            self._partial = b""  # not an event we could use
        for line in lines:
            if line.startswith(b"data:"):
                self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        wanted = self._model is None or (b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data)
        if not wanted:
            return
        try:
            event = json.loads(data)
        except ValueError:
            return  # e.g. "[DONE]"
        if not isinstance(event, dict):
            return
        if self._model is None:
            self._model = response_model(event)
        usage = self._extract(event)
        if usage is not None:
            self._usage = usage

    def finish(self) -> None:
        if self._partial.startswith(b"data:"):
            self._data(self._partial[5:].strip())
        self._report(self._usage, self._model)


Watcher = JSONWatcher | SSEWatcher


class BodyRelay(Protocol):
    """
    Writes an upstream body to the client's request as it arrives. The
    upstream body is the producer of the client's connection, so a client
    that reads slowly slows the upstream down instead of growing memory.
    C{done} fires with the exception that ended the body (C{ResponseDone}
    when it is complete).
    """

    def __init__(self, request: Request, watcher: Watcher | None, first_byte: Callable[[], None]) -> None:
        self._request = request
        self._watcher = watcher
        self._first_byte: Callable[[], None] | None = first_byte
        self.done: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if self._first_byte is not None:
            self._first_byte()
            self._first_byte = None
        if self._watcher is not None:
            self._watcher.feed(data)
        if not self._request.finished and not client_gone(self._request):
            self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        # The client may already be gone (then twisted.web dropped the channel).
        if self._request.producer is not None and self._request.channel is not None:
            self._request.unregisterProducer()
        if self._watcher is not None:
            self._watcher.finish()
        # A Failure passed to callback() would become an errback.
        self.done.callback(reason.value)
