"""
A client that leaves an HTTP answer early costs what the provider billed:
agw keeps reading the answer for its usage (up to --cancel-grace), sends
nothing more, and meters and charges it, as a Realtime session's drain
does. Found by the chaos soak (bench/chaos_soak.py --http-leave-early).
"""

from __future__ import annotations

import io
import json
import socket
from typing import Any

import treq

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.metering import AccessLog
from tests.support import listening_fake, on_twisted_web, running_gateway, seed_config_text, wait_until

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def leave_early(port: int, body: bytes, read_first: bool) -> None:
    """POST C{body}, then close the connection: at once, or after the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        if read_first:
            assert client.recv(65536)


class LeftEarlyTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        self.log = io.StringIO()
        self.gateway, _, self.port = yield running_gateway(self, seed_config_text(upstream_port), access_log=AccessLog(self.log))

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    @inlineCallbacks
    def assert_metered(self) -> Any:
        yield wait_until(lambda: any(line["http.path"] == "/v1/chat/completions" for line in self.lines() if line["event"] == "http"))
        [line] = [line for line in self.lines() if line["event"] == "http" and line["http.path"] == "/v1/chat/completions"]
        [billed] = [entry for entry in self.fake.ledger if entry.operation == "chat"]
        self.assertEqual(line["http.status"], 499)  # the client's: it left
        self.assertEqual(
            (line["gen_ai.usage.input_tokens"], line["gen_ai.usage.output_tokens"]),
            (billed.usage["input_tokens"], billed.usage["output_tokens"]),
        )
        self.assertEqual(line["agw.ai.usage.cost.status"], "Exact")

    @inlineCallbacks
    def test_before_the_answer_began(self) -> Any:
        self.fake.hold_billing()  # the provider takes its time: the client gives up first
        yield deferToThread(leave_early, self.port, BODY, False)
        yield wait_until(lambda: len(self.fake.http_requests) == 1)
        # Once agw has answered a request sent after the client's close, it has read that close too.
        response = yield treq.get(f"http://127.0.0.1:{self.port}/v1/models", persistent=False)
        yield response.content()
        self.fake.release_billing()
        yield self.assert_metered()

    @inlineCallbacks
    def test_in_the_middle_of_a_stream(self) -> Any:
        gate: Deferred[None] = Deferred()
        self.fake.stream_gate = gate  # the stream stops after its first chunk until the client has gone
        streamed = json.dumps({**json.loads(BODY), "stream": True}).encode()
        yield deferToThread(leave_early, self.port, streamed, True)
        # Once agw has answered a request sent after the client's close, it has read that close too.
        response = yield treq.get(f"http://127.0.0.1:{self.port}/v1/models", persistent=False)
        yield response.content()
        gate.callback(None)
        yield self.assert_metered()


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebLeftEarlyTests = on_twisted_web(LeftEarlyTests)
