"""localRateLimit, as agentgateway: token buckets per route, for HTTP requests and inside Realtime sessions."""

from __future__ import annotations

import json
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import parse_config
from agw.config import ConfigError, LocalRateLimit
from agw.decisions import RouteLimits, TokenBucket
from tests.support import (
    listening_fake,
    open_client,
    recv_event,
    running_gateway,
    seed_config_text,
)


class TokenBucketTests(SynchronousTestCase):
    def test_requests_bucket_fills_in_steps(self) -> None:
        clock = Clock()
        bucket = TokenBucket(LocalRateLimit(2, 1, 10.0, "requests"), clock.seconds)
        self.assertEqual([bucket.admit(), bucket.admit(), bucket.admit()], [True, True, False])
        clock.advance(9.9)
        self.assertFalse(bucket.admit())
        self.assertAlmostEqual(bucket.reset_seconds, 0.1, places=3)
        clock.advance(0.1)
        self.assertTrue(bucket.admit())
        clock.advance(100)
        self.assertEqual(bucket.remaining, 2)  # never above its size

    def test_tokens_bucket_charged_after_the_fact(self) -> None:
        clock = Clock()
        bucket = TokenBucket(LocalRateLimit(100, 50, 60.0, "tokens"), clock.seconds)
        self.assertTrue(bucket.admit())
        self.assertEqual(bucket.remaining, 100)  # admitting spends nothing: the response's usage does
        bucket.charge(150)
        self.assertEqual(bucket.remaining, 0)
        self.assertFalse(bucket.admit())
        clock.advance(60)
        self.assertFalse(bucket.admit())  # -50 + 50
        clock.advance(60)
        self.assertTrue(bucket.admit())

    def test_a_workers_share(self) -> None:
        bucket = TokenBucket(LocalRateLimit(5, 3, 1.0, "requests"), Clock().seconds, share=0.5)
        self.assertEqual(bucket.capacity, 3)

    def test_route_spends_nothing_when_one_bucket_refuses(self) -> None:
        clock = Clock()
        limits = RouteLimits([LocalRateLimit(5, 1, 60.0, "requests"), LocalRateLimit(10, 10, 60.0, "tokens")], clock.seconds)
        limits.charge(20)
        self.assertIs(limits.admit(), limits.buckets[1])
        self.assertEqual(limits.buckets[0].remaining, 5)

    def test_config(self) -> None:
        base = "binds:\n- port: 0\n  listeners:\n  - routes:\n    - backends:\n      - ai: {name: o, provider: {openAI: {}}}\n      policies:\n        localRateLimit:\n"
        config = parse_config(base + "        - {maxTokens: 10, tokensPerFill: 2, fillInterval: 1m, type: tokens}\n", {})
        self.assertEqual(config.binds[0].listeners[0].routes[0].policies.rate_limits, (LocalRateLimit(10, 2, 60.0, "tokens"),))
        for bad, message in (
            ("{maxTokens: 0, tokensPerFill: 1, fillInterval: 1s}", "maxTokens: expected a positive whole number"),
            ("{maxTokens: 1, tokensPerFill: 1, fillInterval: soon}", "fillInterval: expected a duration"),
            ("{maxTokens: 1, tokensPerFill: 1, fillInterval: 1s, type: bytes}", "type: expected requests or tokens"),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config(base + f"        - {bad}\n", {})
            self.assertIn(message, str(e.exception))


class RateLimitedGatewayTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        data = yaml.safe_load(seed_config_text(upstream_port))
        for route in data["binds"][0]["listeners"][0]["routes"]:
            route["policies"]["localRateLimit"] = [{"maxTokens": 2, "tokensPerFill": 1, "fillInterval": "60s"}]
        _, _, self.port = yield running_gateway(self, yaml.safe_dump(data))

    @inlineCallbacks
    def test_http_429_with_headers_past_the_bucket(self) -> Any:
        codes = []
        for _ in range(3):
            response = yield treq.post(
                f"http://127.0.0.1:{self.port}/v1/chat/completions", json={"model": "m", "messages": []}, persistent=False,
            )
            body = yield response.json()
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(body["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-limit"), [b"2"])
        self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-remaining"), [b"0"])
        self.assertTrue(0 < int(response.headers.getRawHeaders(b"x-ratelimit-reset")[0]) <= 60)
        self.assertEqual(len(self.fake.http_requests), 2)

    @inlineCallbacks
    def test_realtime_response_create_past_the_bucket_is_refused_in_protocol(self) -> Any:
        def session() -> list[dict[str, Any]]:
            answers = []
            with open_client(f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime") as ws:
                recv_event(ws)
                for n in range(3):
                    ws.send(json.dumps({"type": "response.create", "event_id": f"c{n}"}))
                    while (event := recv_event(ws))["type"] not in ("response.done", "error"):
                        if event["type"] == "rate_limits.updated":
                            answers.append(event)
                    answers.append(event)
            return answers

        answers = yield deferToThread(session)
        kinds = [a["type"] for a in answers]
        self.assertEqual(kinds, ["rate_limits.updated", "response.done", "rate_limits.updated", "response.done", "error"])
        self.assertEqual((answers[-1]["error"]["type"], answers[-1]["error"]["event_id"]), ("requests", "c2"))
        ours = [limit for limit in answers[0]["rate_limits"] if limit["name"].startswith("agw.")]
        self.assertEqual([(limit["name"], limit["limit"], limit["remaining"]) for limit in ours],
                         [("agw.localRateLimit.requests", 2, 1)])
        self.assertEqual(len(self.fake.ledger), 2)
