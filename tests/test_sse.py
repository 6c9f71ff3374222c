"""Removing the usage agw asked for from a chat completion stream, however the stream is cut into reads."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from agw.metering import UsageChunkRemover


def sse(chunk: object, end: bytes = b"\n\n") -> bytes:
    return b"data: " + (chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()) + end


BASE = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
WITH_USAGE = b"".join([
    sse({**BASE, "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None}),
    sse({**BASE, "usage": None, "choices": [{"index": 0, "delta": {"content": ' "usage": null'}}]}),
    sse({**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}),
    sse({**BASE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
    sse(b"[DONE]"),
])
WITHOUT_USAGE = b"".join([
    sse({**BASE, "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
    sse({**BASE, "choices": [{"index": 0, "delta": {"content": ' "usage": null'}}]}),
    sse({**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    sse(b"[DONE]"),
])


def run(remover: UsageChunkRemover, data: bytes, size: int) -> bytes:
    out = [remover.feed(data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(out) + remover.finish()


class UsageChunkRemoverTests(SynchronousTestCase):
    def test_any_read_size(self) -> None:
        for size in (1, 2, 7, 64, len(WITH_USAGE)):
            with self.subTest(size=size):
                self.assertEqual(run(UsageChunkRemover(), WITH_USAGE, size), WITHOUT_USAGE)

    def test_crlf_line_endings(self) -> None:
        data = WITH_USAGE.replace(b"\n\n", b"\r\n\r\n")
        self.assertEqual(run(UsageChunkRemover(), data, 5), WITHOUT_USAGE.replace(b"\n\n", b"\r\n\r\n"))

    def test_compact_json_and_first_key(self) -> None:
        event = b'data: {"usage":null,"id":"c","choices":[{"delta":{}}]}\n\n'
        self.assertEqual(run(UsageChunkRemover(), event, 3), b'data: {"id":"c","choices":[{"delta":{}}]}\n\n')

    def test_unterminated_last_event_is_passed_on(self) -> None:
        self.assertEqual(run(UsageChunkRemover(), b"data: [DONE]", 4), b"data: [DONE]")
