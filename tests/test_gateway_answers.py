"""
agw's own answers, recorded as what happened: a 502 or 504 in the place
of the provider's answer is the request's own record (its consumer, its
real duration, its span), a body nested past what the decoder reads is
the client's 400, not agw's 502.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.http import HTTPOptions
from agw.metering import AccessLog
from tests.wire_support import RawRequest, gateway_to, raw_request, status_and_error

TEAM_KEY = "sk-team-a-0123456789"
TIMEOUT = 0.3


def with_a_consumer(config: dict) -> None:
    """The seed config with an apiKey policy on its HTTP route: one key, consumer team-a."""
    route = config["binds"][0]["listeners"][0]["routes"][1]
    route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": TEAM_KEY, "metadata": {"name": "team-a"}}]}


def post(path: bytes, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path, TEAM_KEY.encode(), len(body), body)
    )


class UpstreamFailureRecordTests(TestCase):
    """An upstream that never answers a chat completion, and closes on anything else."""

    @inlineCallbacks
    def setUp(self) -> Any:
        def script(request: RawRequest) -> tuple[bytes, bool]:
            if request.head.startswith(b"POST /v1/chat/completions"):
                return b"", False  # silent: agw's upstream timeout answers
            return b"", True

        self.log = io.StringIO()
        self.upstream, self.port, _, _ = yield gateway_to(
            self, script, with_a_consumer, http_options=HTTPOptions(response_timeout=TIMEOUT), access_log=AccessLog(self.log),
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    @inlineCallbacks
    def test_a_504_is_the_requests_own_record(self) -> Any:
        answer = yield deferToThread(raw_request, self.port, post(b"/v1/chat/completions", b'{"model": "m", "messages": []}'))
        self.assertEqual(status_and_error(answer), (504, "upstream_timeout"))
        (record,) = self.records()
        self.assertEqual((record["http.status"], record.get("agw.consumer")), (504, "team-a"))
        # The request's own start, not the moment the 504 was written: it waited out the timeout.
        self.assertGreaterEqual(record["duration_s"], TIMEOUT)
        self.assertEqual(record.get("gen_ai.request.model"), "gpt-4")  # what was asked for, from the request

    @inlineCallbacks
    def test_a_502_is_the_requests_own_record(self) -> Any:
        answer = yield deferToThread(raw_request, self.port, post(b"/v1/files", b"upload"))
        self.assertEqual(status_and_error(answer), (502, "upstream_closed"))
        (record,) = self.records()
        self.assertEqual((record["http.status"], record.get("agw.consumer")), (502, "team-a"))


class NestedBodyTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, _ = yield gateway_to(self, lambda request: (b"", True), with_a_consumer)

    @inlineCallbacks
    def test_a_body_nested_too_deep_is_the_clients_400(self) -> Any:
        for body in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
            answer = yield deferToThread(raw_request, self.port, post(b"/v1/chat/completions", body))
            self.assertEqual(status_and_error(answer), (400, "invalid_json"))
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(self.flushLoggedErrors(), [])
