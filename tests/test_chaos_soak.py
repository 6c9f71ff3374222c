"""
The chaos soak's short version (bench/chaos_soak.py: workers, reloads, a
provider killed, closing with 1011 and stalling, clients that read slowly or
vanish; nothing lost, nothing left open), and the fake's hold on billing
that lets it kill the provider without leaving the bill in doubt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from websockets.sync.client import ClientConnection, connect

from agw.testing import FakeOpenAI, chat_usage, response_usage
from tests.support import REPO, recv_event, wait_until


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


class ChaosSoakTests(TestCase):
    """The soak, short: 25 s of faults and load through C{twistd agw --workers 2}; exit 0 means nothing lost or leaked."""

    timeout = 240

    @inlineCallbacks
    def test_short_soak(self) -> Any:
        report = os.path.abspath(self.mktemp() + ".json")
        command = [
            sys.executable, os.path.join(REPO, "bench", "chaos_soak.py"), "--seconds", "25", "--sessions", "40",
            "--http-rate", "15", "--warmup", "2", "--reload-every", "3", "--kill-every", "8", "--close-every", "5",
            "--stall-every", "6", "--json", report,
        ]
        done = yield deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=220, cwd=REPO)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        with open(report) as f:
            checks = json.load(f)["checks"]
        self.assertEqual([name for name, ok in checks.items() if not ok], [])
        self.assertIn("chaos soak: 2 workers", done.stdout)
