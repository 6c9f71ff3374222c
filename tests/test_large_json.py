"""
JSON response bodies larger than C{--max-json-body} are not kept whole, and
still metered: the model from a bounded head, the usage from a bounded tail
(OpenAI writes C{usage} last).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from agw.http import HTTPOptions
from agw.metering import (
    JSONWatcher,
    TokenUsage,
    chat_completion_usage,
    embeddings_usage,
    responses_usage,
)
from tests.support import GatewayTestCase, on_twisted_web, token_sums

LIMIT = 64 * 1024


class LargeEmbeddingsTests(GatewayTestCase):
    http_options = HTTPOptions(max_json_body=LIMIT)
    relay_types = {"/v1/embeddings": "embeddings"}

    @inlineCallbacks
    def test_embeddings_over_the_limit_are_metered(self) -> Any:
        """100 vectors of 3072 floats: about 6 MB, far over the limit, its tokens all on /metrics."""
        request = {"model": "text-embedding-3-large", "input": ["hi"] * 100, "dimensions": 3072}
        response = yield treq.post(f"{self.http_base}/embeddings", json=request, persistent=False)
        raw = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertGreater(len(raw), 20 * LIMIT)
        body = json.loads(raw)  # the client gets it whole
        self.assertEqual((len(body["data"]), len(body["data"][0]["embedding"])), (100, 3072))
        samples = yield self.scrape()
        billed = {key: float(value) for key, value in self.fake.billed().items()}
        self.assertEqual(token_sums(samples), billed)
        tokens = sum(
            value for (name, labels), value in samples.items()
            if name == "agw_gen_ai_tokens_total" and dict(labels)["gen_ai_token_type"] == "input"
        )
        self.assertEqual(tokens, body["usage"]["prompt_tokens"])


CHAT_USAGE = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29, "prompt_tokens_details": {"cached_tokens": 8}}
RESPONSES_USAGE = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 87}


def watch(extract: Any, body: bytes, limit: int = 1000, read: int = 4096) -> list[tuple[TokenUsage | None, str | None]]:
    """What a JSONWatcher with C{limit} reports of C{body} fed in reads of C{read} bytes."""
    reports: list[tuple[TokenUsage | None, str | None]] = []
    watcher = JSONWatcher(extract, lambda usage, model: reports.append((usage, model)), limit)
    for i in range(0, len(body), read):
        watcher.feed(body[i:i + read])
    watcher.finish()
    return reports


def text(size: int) -> str:
    """Model output that mentions usage the way a JSON string can: quotes escaped."""
    return ('say "usage": {"prompt_tokens": 1} and {[' * (size // 40 + 1))[:size]


class LargeBodyWatcherTests(SynchronousTestCase):
    """Bodies over the limit, larger than the head and the tail kept of them too."""

    def test_chat_completion(self) -> None:
        body = json.dumps({
            "id": "c", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text(600_000)}}],
            "usage": CHAT_USAGE, "system_fingerprint": "fp",
        }).encode()
        self.assertEqual(watch(chat_completion_usage, body), [(chat_completion_usage({"usage": CHAT_USAGE}), "gpt-4o-2024-08-06")])

    def test_responses_with_fields_after_usage(self) -> None:
        """Responses objects end with user and metadata: a metadata key named usage is not the usage."""
        body = json.dumps({
            "id": "r", "object": "response", "model": "gpt-4o-2024-08-06",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text(400_000)}]}],
            "usage": RESPONSES_USAGE, "user": None, "metadata": {"usage": "team-a", "note": '"usage": {"input_tokens": 1}'},
        }, separators=(",", ":")).encode()
        self.assertEqual(watch(responses_usage, body, read=1), [(responses_usage({"usage": RESPONSES_USAGE}), "gpt-4o-2024-08-06")])

    def test_nested_usage_after_the_body_usage_is_not_taken(self) -> None:
        body = json.dumps({
            "model": "m", "data": [text(300_000)], "usage": {"prompt_tokens": 7},
            "extra": {"usage": {"prompt_tokens": 1}}, "list": [{"usage": {"prompt_tokens": 2}}],
        }).encode()
        self.assertEqual(watch(embeddings_usage, body)[0][0], embeddings_usage({"usage": {"prompt_tokens": 7}}))

    def test_embeddings_name_their_model_after_their_data(self) -> None:
        vectors = [{"object": "embedding", "index": i, "embedding": [0.125] * 3072} for i in range(20)]
        body = json.dumps({"object": "list", "data": vectors, "model": "text-embedding-3-large", "usage": {"prompt_tokens": 40}}).encode()
        self.assertGreater(len(body), 256 * 1024 + 64 * 1024)
        self.assertEqual(watch(embeddings_usage, body), [(embeddings_usage({"usage": {"prompt_tokens": 40}}), "text-embedding-3-large")])

    def test_no_usage_or_cut_off_is_none(self) -> None:
        whole = json.dumps({"model": "m", "data": [text(300_000)], "usage": CHAT_USAGE}).encode()
        for body in (json.dumps({"model": "m", "data": [text(300_000)]}).encode(), whole[:-1], whole[:-20]):
            self.assertEqual(watch(chat_completion_usage, body)[0][0], None)

    def test_within_the_limit_unchanged(self) -> None:
        body = json.dumps({"model": "m", "usage": CHAT_USAGE}).encode()
        self.assertEqual(watch(chat_completion_usage, body, limit=len(body)), [(chat_completion_usage({"usage": CHAT_USAGE}), "m")])


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebLargeEmbeddingsTests = on_twisted_web(LargeEmbeddingsTests)
