"""
HTTP response bodies read for usage as they pass: a JSON body kept whole up
to a limit (L{JSONWatcher}), server-sent events read line by line
(L{SSEWatcher}), and a chat completion stream given back without the usage
agw asked for on the client's behalf (L{UsageChunkRemover}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from agw.config import MiB
from agw.metering._bounded import BodyEnds, model_in, usage_in_tail
from agw.metering._usage import TokenUsage, response_model

UsageExtractor = Callable[[dict[str, Any]], TokenUsage | None]
# (usage or None, response model or None)
UsageReport = Callable[[TokenUsage | None, str | None], None]


class JSONWatcher:
    """
    Keeps a JSON body (up to C{limit} bytes) and reports its usage at the
    end. A larger body is not kept whole: its usage is read from its last
    bytes and its model from its first (L{BodyEnds}), so it is still metered.
    """

    def __init__(self, extract: UsageExtractor, report: UsageReport, limit: int) -> None:
        self._extract, self._report, self._limit = extract, report, limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._ends: BodyEnds | None = None  # once the body is over the limit

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._ends is not None:
            self._ends.feed(data)
        elif self._size <= self._limit:
            self._chunks.append(data)
        else:
            self._ends = BodyEnds()
            for chunk in self._chunks:
                self._ends.feed(chunk)
            self._ends.feed(data)
            self._chunks = []

    def finish(self) -> None:
        if self._ends is not None:
            self._report(usage_in_tail(self._ends.tail, self._extract), model_in(self._ends))
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

    _MAX_LINE = MiB

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

# An event ends with a blank line (any of the three line endings SSE allows).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
# The null usage OpenAI adds to every chunk of a stream with include_usage.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')


class UsageChunkRemover:
    """
    A chat completion stream with C{stream_options.include_usage} made into
    the stream without it: the final usage chunk (C{"choices": []}) is
    dropped and the C{"usage": null} of every other chunk removed, so a
    client that did not ask for usage gets what OpenAI would have sent it,
    while agw still counts every token. Everything else passes byte for
    byte; output is held back only to the end of the current event.
    """

    _MAX_EVENT = 4 * MiB

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """The bytes of C{data} that can be passed on now."""
        self._pending += data
        out, start = [], 0
        for end in _EVENT_END.finditer(self._pending):
            out.append(self._event(self._pending[start:end.start()], end.group()))
            start = end.end()
        self._pending = self._pending[start:]
        if len(self._pending) > self._MAX_EVENT:
            # Not an event this filter understands: pass it on as it is.
            out.append(self._pending)
            self._pending = b""
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left at the end of the stream."""
        rest, self._pending = self._pending, b""
        return self._event(rest, b"") if rest else b""

    @staticmethod
    def _event(event: bytes, end: bytes) -> bytes:
        if b'"usage"' not in event:
            return event + end
        for line in event.splitlines():
            if line.startswith(b"data:") and _is_usage_chunk(line[5:].strip()):
                return b""
        return _NULL_USAGE.sub(b"", event) + end


def _is_usage_chunk(data: bytes) -> bool:
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
