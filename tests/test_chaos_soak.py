"""
The fake's hold on billing, which lets the chaos soak kill the provider
without leaving the bill in doubt.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from websockets.sync.client import ClientConnection, connect

from agw.testing import FakeOpenAI, chat_usage, response_usage
from tests.support import recv_event, wait_until


def ask_response(ws: ClientConnection) -> list[str]:
    """Ask for a text response; the types of the events up to its last delta."""
    recv_event(ws)  # session.created
    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    seen: list[str] = []
    while seen.count("response.output_text.delta") < 2:  # the fake's reply: "Hello", "!"
        seen.append(recv_event(ws)["type"])
    return seen


class HoldBillingTests(TestCase):
    """L{FakeOpenAI.hold_billing}: what would bill waits, nothing else does."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake = FakeOpenAI()
        port = yield self.fake.listen(reactor)
        self.addCleanup(port.stopListening)
        self.base = f"127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_realtime_response_stays_mid_stream(self) -> Any:
        # No response_delay: unheld, response.done would go out with the deltas, in the same turn.
        self.fake.hold_billing()

        def billed_then_release() -> list[Any]:
            billed = list(self.fake.ledger)
            self.fake.release_billing()
            return billed

        def session() -> tuple[list[str], list[Any], dict[str, Any]]:
            with connect(f"ws://{self.base}/v1/realtime?model=m", compression=None) as ws:
                seen = ask_response(ws)
                billed = blockingCallFromThread(reactor, billed_then_release)
                return seen, billed, recv_event(ws)

        seen, billed_while_held, done = yield deferToThread(session)
        self.assertEqual(seen, ["response.created", "rate_limits.updated"] + ["response.output_text.delta"] * 2)
        self.assertEqual(billed_while_held, [])
        self.assertEqual((done["type"], done["response"]["usage"]), ("response.done", response_usage(1, False)))
        self.assertEqual([entry.usage for entry in self.fake.ledger], [response_usage(1, False)])

    @inlineCallbacks
    def test_http_completion_waits(self) -> Any:
        self.fake.hold_billing()
        answer = treq.post(f"http://{self.base}/v1/chat/completions", json={"model": "m", "messages": []}, persistent=False)
        answered: list[Any] = []
        answer.addCallback(lambda response: answered.append(response) or response)
        yield wait_until(lambda: self.fake.http_requests)
        self.assertEqual((answered, self.fake.ledger), ([], []))
        self.fake.release_billing()
        response = yield answer
        body = yield response.json()
        self.assertEqual(body["usage"], chat_usage(1))
        self.assertEqual(len(self.fake.ledger), 1)

