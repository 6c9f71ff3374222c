"""
HTTP response bodies read for usage as they pass: a JSON body kept whole up
to a limit (L{JSONWatcher}), server-sent events read line by line
(L{SSEWatcher}), and a chat completion stream given back without the usage
agw asked for on the client's behalf (L{UsageChunkRemover}).

The SSE scanners are linear in the bytes they are fed, however the stream is
cut into reads: a line or event is kept as the pieces it came in and joined
once, and each read is searched once (with the few bytes before it that can
begin an event end).
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


def _loads(data: bytes) -> Any:
    """C{data} as JSON (UTF-16 or -32, as json.loads detects them), or C{None}."""
    try:
        return json.loads(data)
    except ValueError:
        return None


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
        data = b"".join(self._chunks)
        try:
            # As text when it is UTF-8 (nearly always): json.loads of bytes first looks for the encoding.
            body = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            body = _loads(data)
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
    C{response.completed}); the model is taken from the first event. A line
    over C{_MAX_LINE} is not kept whole: its usage is read from its end
    (L{BodyEnds}), as for a large JSON body.
    """

    _MAX_LINE = MiB

    def __init__(self, extract: UsageExtractor, report: UsageReport) -> None:
        self._extract, self._report = extract, report
        # The line so far, in the pieces it came in: joined once, when it ends
        # (joining at every read would copy a long line again and again).
        self._pieces: list[bytes] = []
        self._size = 0
        self._long: BodyEnds | None = None  # the line so far, once over _MAX_LINE
        self._usage: TokenUsage | None = None
        self._model: str | None = None

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._take(data[start:end])
            self._line_ended()
            start = end + 1
        if start < len(data):
            self._take(data[start:])

    def _take(self, piece: bytes) -> None:
        if self._long is not None:
            self._long.feed(piece)
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > self._MAX_LINE:
            self._long = BodyEnds()
            for kept in self._pieces:
                self._long.feed(kept)
            self._pieces, self._size = [], 0

    def _line_ended(self) -> None:
        if self._long is not None:
            long, self._long = self._long, None
            self._long_line(long)
            return
        line = b"".join(self._pieces)
        self._pieces, self._size = [], 0
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

    def _long_line(self, ends: BodyEnds) -> None:
        if not ends.head.startswith("data:"):
            return
        if self._model is None:
            self._model = model_in(ends, top_level=False)
        # A chat chunk's usage is its own field; a response.completed's is its response's.
        usage = usage_in_tail(ends.tail, self._extract, depths=(1, 2))
        if usage is not None:
            self._usage = usage

    def finish(self) -> None:
        if self._long is not None or self._pieces:
            self._line_ended()
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
    # An event end is at most four bytes (CR LF CR LF), and a CR at its end
    # looks at one more: a match can start this far back in what came before.
    _OVERLAP = 4

    def __init__(self) -> None:
        # The current event so far, in the pieces it came in (joined once,
        # when it ends), and its last few bytes, searched again with the next read.
        self._pieces: list[bytes] = []
        self._size = 0
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        """The bytes of C{data} that can be passed on now."""
        carry = self._carry
        window = carry + data
        out: list[bytes] = []
        start = None  # where in the window the current event starts, once one has ended in it
        for end in _EVENT_END.finditer(window):
            if end.end() == len(window) and window.endswith(b"\r"):
                break  # a CR read last may be the first half of a CR LF: wait for the next byte
            if start is None:
                event = b"".join(self._pieces)[: self._size - len(carry)] + window[: end.start()]
            else:
                event = window[start:end.start()]
            out.append(self._event(event, end.group()))
            start = end.end()
        if start is None:
            self._pieces.append(data)
            self._size += len(data)
            self._carry = window[-self._OVERLAP:]
        else:
            rest = window[start:]
            self._pieces, self._size, self._carry = [rest], len(rest), rest[-self._OVERLAP:]
        if self._size > self._MAX_EVENT:
            # Not an event this filter understands: pass it on as it is.
            out.append(b"".join(self._pieces))
            self._pieces, self._size, self._carry = [], 0, b""
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left at the end of the stream."""
        rest = b"".join(self._pieces)
        self._pieces, self._size, self._carry = [], 0, b""
        return self._event(rest, b"") if rest else b""

    @staticmethod
    def _event(event: bytes, end: bytes) -> bytes:
        if b'"usage"' not in event:
            return event + end
        for line in event.splitlines():
            if line.startswith(b"data:") and _is_usage_chunk(line[5:].strip()):
                return b""
        return _NULL_USAGE.sub(b"", event) + end


# Where a chunk's usage is an object: a chunk without one (a null usage: every chunk before the
# last) is not decoded. OpenAI writes its keys unescaped; SSEWatcher looks for usage the same way.
_OBJECT_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def _is_usage_chunk(data: bytes) -> bool:
    if _OBJECT_USAGE.search(data) is None:
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
