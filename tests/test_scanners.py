"""
The SSE scanners (L{SSEWatcher}, L{UsageChunkRemover}) give the same
answer however a stream is cut into reads, and look at each byte a bounded
number of times: a long line or event arriving in many small reads is not
joined and searched again at every read.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import agw.metering._bodies
from agw.metering import SSEWatcher, TokenUsage, UsageChunkRemover, chat_completion_usage, responses_usage

BASE = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def event(chunk: object, newline: bytes = b"\n") -> bytes:
    data = chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()
    return b"data: " + data + newline + newline


def stream(newline: bytes) -> bytes:
    """A chat completion stream with include_usage, with C{newline} line endings, a comment and an event name."""
    return b"".join([
        b": keep-alive" + newline + newline,
        event({**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}], "usage": None}, newline),
        b"event: chunk" + newline + event({**BASE, "usage": None, "choices": [{"delta": {"content": ' "usage": null\r\n'}}]}, newline),
        event({**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}, newline),
        event({**BASE, "choices": [], "usage": USAGE}, newline),
        event(b"[DONE]", newline),
    ])


STREAMS = [stream(b"\n"), stream(b"\r\n"), stream(b"\r"), stream(b"\r\n").replace(b"\r\n\r\n", b"\n\r\n", 2)]


def cuts(data: bytes, rng: random.Random) -> Iterator[list[bytes]]:
    """C{data} in reads: one byte each, cut before and after every CR and LF, and at random places."""
    yield [data[i:i + 1] for i in range(len(data))]
    marks = sorted({i for i, b in enumerate(data) if b in b"\r\n"} | {i + 1 for i, b in enumerate(data) if b in b"\r\n"})
    yield [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)])]
    for _ in range(200):
        points = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        yield [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def remove(reads: list[bytes]) -> bytes:
    remover = UsageChunkRemover()
    return b"".join(remover.feed(read) for read in reads) + remover.finish()


def watch(reads: list[bytes], extract: Callable[[dict[str, Any]], TokenUsage | None] = chat_completion_usage) -> Any:
    reports: list[Any] = []
    watcher = SSEWatcher(extract, lambda usage, model: reports.append((usage, model)))
    for read in reads:
        watcher.feed(read)
    watcher.finish()
    return reports


class SplitAnywhereTests(SynchronousTestCase):
    def test_remover_output_does_not_depend_on_reads(self) -> None:
        rng = random.Random(20240611)
        for data in STREAMS:
            whole = remove([data])
            self.assertNotIn(b'"usage"', whole.replace(b'\\"usage\\": null', b""))
            for reads in cuts(data, rng):
                self.assertEqual(remove(reads), whole, [read for read in reads])

    def test_remover_on_random_streams(self) -> None:
        """Streams made of line ends and pieces of events, every way CR and LF can meet."""
        rng = random.Random(3)
        pieces = [b"\r", b"\n", b"data: ", b'{"choices": [], "usage": {"total_tokens": 1}}', b'{"n": 1, "usage": null}', b"[DONE]"]
        for _ in range(3000):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 24)))
            points = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(1, 8))))
            reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
            self.assertEqual(remove(reads), remove([data]), reads)

    def test_watcher_report_does_not_depend_on_reads(self) -> None:
        rng = random.Random(7)
        for data in STREAMS[:2]:  # the watcher reads lines ending with LF, as before
            whole = watch([data])
            self.assertEqual(whole, [(chat_completion_usage({"usage": USAGE}), "gpt-4o-2024-08-06")])
            for reads in cuts(data, rng):
                self.assertEqual(watch(reads), whole)


def counting(examined: list[int]) -> type[bytes]:
    """A bytes type that adds to C{examined} the bytes each concatenation, search or slice of it goes through."""

    class Counted(bytes):
        def __add__(self, other: Any) -> bytes:
            examined[0] += len(self) + len(other)
            return bytes(self) + bytes(other)

        def __radd__(self, other: Any) -> bytes:
            examined[0] += len(other) + len(self)
            return bytes(other) + bytes(self)

        def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
            examined[0] += len(self) - (start or 0)
            return bytes(self).find(sub, start, end)

        def split(self, *args: Any) -> list[bytes]:
            examined[0] += len(self)
            return bytes(self).split(*args)

        def __getitem__(self, index: Any) -> Any:
            part = bytes(self)[index]
            examined[0] += len(part) if isinstance(part, bytes) else 1
            return part

    return Counted


class CountingPattern:
    """A compiled pattern that adds to C{examined} the length of every text it is asked to search."""

    def __init__(self, pattern: Any, examined: list[int]) -> None:
        self._pattern, self._examined = pattern, examined

    def finditer(self, text: bytes, pos: int = 0, endpos: int | None = None) -> Any:
        self._examined[0] += (len(text) if endpos is None else min(endpos, len(text))) - pos
        return self._pattern.finditer(text, pos, len(text) if endpos is None else endpos)

    def search(self, text: bytes, pos: int = 0, endpos: int | None = None) -> Any:
        self._examined[0] += (len(text) if endpos is None else min(endpos, len(text))) - pos
        return self._pattern.search(text, pos, len(text) if endpos is None else endpos)


class LinearTests(SynchronousTestCase):
    """A line of almost 1 MiB in 1 KiB reads: each byte looked at a few times, not hundreds."""

    READ = 1024

    def long_event(self) -> bytes:
        chunk = {**BASE, "choices": [{"index": 0, "delta": {"content": "x" * (1024 * 1024 - 400)}}], "usage": USAGE}
        return event(chunk)

    def reads(self, data: bytes, examined: list[int]) -> list[bytes]:
        counted = counting(examined)
        return [counted(data[i:i + self.READ]) for i in range(0, len(data), self.READ)]

    def test_watcher(self) -> None:
        examined = [0]
        data = self.long_event()
        self.assertEqual(watch(self.reads(data, examined)), [(chat_completion_usage({"usage": USAGE}), "gpt-4o-2024-08-06")])
        self.assertLess(examined[0], 3 * len(data))

    def test_remover(self) -> None:
        examined = [0]
        self.patch(agw.metering._bodies, "_EVENT_END", CountingPattern(agw.metering._bodies._EVENT_END, examined))
        data = self.long_event() + event(b"[DONE]")
        self.assertEqual(remove(self.reads(data, examined)), data)  # usage the client asked for: kept
        self.assertLess(examined[0], 3 * len(data))


class LongLineTests(SynchronousTestCase):
    def test_streamed_response_completed_over_a_mebibyte_is_metered(self) -> None:
        """A response.completed carries the whole response: a long one is still counted, from its end."""
        usage = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 87}
        response = {
            "id": "r", "object": "response", "model": "gpt-4o-2024-08-06",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "y" * (3 * 1024 * 1024)}]}],
            "usage": usage, "user": None, "metadata": {},
        }
        created = event({"type": "response.created", "response": {**response, "output": [], "usage": None}})
        completed = b"event: response.completed\n" + event({"type": "response.completed", "response": response})
        reads = [created] + [completed[i:i + 65536] for i in range(0, len(completed), 65536)]
        self.assertEqual(watch(reads, responses_usage), [(responses_usage({"usage": usage}), "gpt-4o-2024-08-06")])
