"""Stopping the gateway: stop accepting, drain, close sessions with 1001, finish HTTP requests."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.support import (
    GatewayTestCase,
    accepts_connections,
    on_twisted_web,
    open_client,
    recv_event,
    registry_samples,
    token_sums,
    wait_closed,
    wait_until,
)


class GracefulStopTests(GatewayTestCase):
    @inlineCallbacks
    def test_stop_drains_then_closes_with_1001(self) -> Any:
        self.service.drain_period = 0.5
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)

        # An HTTP request in flight: a streamed completion held after its first chunk.
        gate: Deferred[None] = Deferred()
        self.fake.stream_gate = gate
        pending = treq.post(
            f"{self.http_base}/chat/completions", json={"model": "m", "messages": [], "stream": True}, persistent=False
        )
        response = yield pending
        body = treq.content(response)
        yield wait_until(lambda: len(self.gateway.in_flight) == 1)

        stopping = self.service.stopService()
        self.assertFalse(self.service.is_ready())
        yield wait_until(lambda: not accepts_connections(self.port))
        self.assertFalse(stopping.called)
        gate.callback(None)  # the HTTP request finishes within the drain period
        content = yield body
        self.assertIn(b"[DONE]", content)
        code, _ = yield deferToThread(wait_closed, ws)
        self.assertEqual(code, 1001)
        yield stopping
        self.assertEqual(self.fake.closes, [(1001, "gateway shutting down")])

    @inlineCallbacks
    def test_stop_waits_for_usage_of_responses_in_flight(self) -> Any:
        """A provider that takes its time to report a cancelled response's usage is waited for, up to the cancel grace."""
        self.fake.response_delay = 30.0
        self.fake.cancel_delay = 2.5  # longer than the close handshake timeout
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        yield deferToThread(ws.send, json.dumps({"type": "response.create"}))
        yield wait_until(lambda: any(s._pending for s in self.fake.sessions))
        yield self.service.stopService()
        self.assertEqual(len(self.fake.ledger), 1)
        billed = self.fake.billed()
        counted = token_sums(registry_samples(self.gateway.metrics.registry))
        self.assertEqual({k: v for k, v in counted.items() if v}, {(op, model, t): v for (op, model, t), v in billed.items() if v})


# The same tests with the handshake through twisted.web (--legacy-http): the path embedders' sites take.
TwistedWebGracefulStopTests = on_twisted_web(GracefulStopTests)
