"""
Back pressure over real sockets: a peer that does not read makes the gateway
stop reading from the other peer, so memory stays bounded, and nothing is
lost once it reads again. The gateway runs as its own process (twistd), so
its memory is measured alone, not with the fake's and the clients'.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.config import MiB
from agw.testing import FakeOpenAI
from tests.support import TwistdAgw, open_client, recv_event, rss, wait_until

TOTAL = 500 * MiB
BOUND = 64 * MiB


def stalled(read: Any, polls: int = 20) -> Any:
    """A predicate that is true once C{read()} has not changed for C{polls} polls."""
    state = {"last": None, "same": 0}

    def check() -> bool:
        value = read()
        state["same"] = state["same"] + 1 if value == state["last"] else 0
        state["last"] = value
        return state["same"] >= polls

    return check


class BackPressureTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake = FakeOpenAI()
        upstream = yield self.fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        self.agw = yield TwistdAgw.start(self, upstream.getHost().port)
        self.addCleanup(self.agw.stop)
        self.url = f"ws://127.0.0.1:{self.agw.port}/v1/realtime?model=m"

    def gateway_rss(self) -> int:
        return rss(self.agw.process.pid)

    @inlineCallbacks
    def test_client_that_does_not_read(self) -> Any:
        """500 MB of audio deltas towards a client that stops reading."""
        ws = yield deferToThread(open_client, self.url, max_queue=4)
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        before = self.gateway_rss()
        yield deferToThread(ws.send, json.dumps({"type": "test.stream", "bytes": TOTAL, "chunk": 36 * 1024}))
        yield wait_until(stalled(lambda: self.fake.streamed), timeout=30)
        grown = self.gateway_rss() - before
        self.assertLess(self.fake.streamed, TOTAL)  # the upstream was made to wait
        self.assertLess(grown, BOUND, f"the gateway grew {grown / MiB:.0f} MiB while the client was not reading")

        def read_all() -> int:
            received = 0
            while received < self.fake.streamed or self.fake.streamed < TOTAL - 64 * 1024:
                received += len(ws.recv(timeout=30))
            return received

        received = yield deferToThread(read_all)
        self.assertEqual(received, self.fake.streamed)

    @inlineCallbacks
    def test_upstream_that_does_not_read(self) -> Any:
        """500 MB of input_audio_buffer.append towards an upstream that stops reading."""
        self.fake.keep_received = False
        ws = yield deferToThread(open_client, self.url)
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        self.fake.sessions[0].transport.pauseProducing()
        chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (48 * 1024)})
        count = TOTAL // len(chunk)
        sent = {"n": 0}

        def send_all() -> None:
            for _ in range(count):
                ws.send(chunk)
                sent["n"] += 1

        before = self.gateway_rss()
        sending = deferToThread(send_all)
        yield wait_until(stalled(lambda: sent["n"]), timeout=30)
        grown = self.gateway_rss() - before
        self.assertLess(sent["n"], count)  # the client was made to wait
        self.assertLess(grown, BOUND, f"the gateway grew {grown / MiB:.0f} MiB while the upstream was not reading")
        self.fake.sessions[0].transport.resumeProducing()
        yield sending
        yield wait_until(lambda: self.fake.received_bytes >= count * len(chunk), timeout=60)
        self.assertEqual(self.fake.received_bytes, count * len(chunk))
