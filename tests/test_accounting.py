"""
Accounting beyond agentgateway: transcription, modality, abandoned
responses, session metrics; counted tokens equal the upstream's ledger.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from agw.metering import GatewayMetrics, RealtimeSession, RouteLabels
from agw.metering._realtime import MAX_UNACKNOWLEDGED
from agw.realtime import RelayOptions
from agw.testing import REALTIME_MODEL
from tests.support import (
    GatewayTestCase,
    ledger_modalities,
    modality_sums,
    open_client,
    recv_event,
    token_sums,
    wait_until,
)

ROUTE = {"bind": "0", "gateway": "bind/0", "listener": "listener0", "route": "route0", "route_rule": ""}


class AccountingTestCase(GatewayTestCase):
    @property
    def url(self) -> str:
        return f"{self.ws_base}/realtime?model=gpt-realtime"

    @inlineCallbacks
    def assert_ledger_on_metrics(self) -> Any:
        samples = yield self.scrape()
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))
        self.assertEqual(ledger_modalities(self.fake.ledger), modality_sums(samples))
        return samples


class ModalityAndTranscriptionTests(AccountingTestCase):
    @inlineCallbacks
    def test_audio_text_and_transcription(self) -> Any:
        self.fake.transcription_usage = {
            "type": "tokens", "input_tokens": 14, "output_tokens": 5, "total_tokens": 19,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
        }

        def session() -> None:
            with open_client(self.url) as ws:
                recv_event(ws)
                for modalities in (["audio"], ["text"], ["audio"]):
                    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
                    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": modalities}}))
                    while recv_event(ws)["type"] != "response.done":
                        pass

        yield deferToThread(session)
        samples = yield self.assert_ledger_on_metrics()
        transcription = {k: v for k, v in token_sums(samples).items() if k[0] == "transcription"}
        self.assertEqual(transcription, {("transcription", "gpt-4o-transcribe", "input"): 42.0, ("transcription", "gpt-4o-transcribe", "output"): 15.0})
        self.assertEqual(modality_sums(samples)[("chat", "output", "audio")], sum(
            e.usage["output_token_details"]["audio_tokens"] for e in self.fake.ledger if e.operation == "chat"))
        ttft = samples[("agentgateway_gen_ai_server_time_to_first_token_count", frozenset({
            "gen_ai_operation_name": "chat", "gen_ai_system": "openai", "gen_ai_request_model": "gpt-realtime",
            "gen_ai_response_model": REALTIME_MODEL, **ROUTE}.items()))]
        self.assertEqual(ttft, 3.0)

    @inlineCallbacks
    def test_transcription_by_duration(self) -> Any:
        self.fake.transcription_usage = {"type": "duration", "seconds": 2.5}

        def session() -> None:
            with open_client(self.url) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                while recv_event(ws)["type"] != "conversation.item.input_audio_transcription.completed":
                    pass

        yield deferToThread(session)
        samples = yield self.scrape()
        seconds = [v for (n, _), v in samples.items() if n == "agw_gen_ai_audio_seconds_total"]
        self.assertEqual(seconds, [2.5])


class SessionMetricsTests(AccountingTestCase):
    @inlineCallbacks
    def test_messages_bytes_and_duration(self) -> Any:
        def session() -> None:
            with open_client(self.url) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "test.echo", "pad": "x" * 1000}))
                recv_event(ws)

        yield deferToThread(session)
        yield wait_until(lambda: not self.gateway.relays[0].connections)
        samples = yield self.scrape()
        sent = samples[("agw_realtime_messages_total", frozenset({**ROUTE, "direction": "client_to_upstream"}.items()))]
        received = samples[("agw_realtime_messages_total", frozenset({**ROUTE, "direction": "upstream_to_client"}.items()))]
        self.assertEqual((sent, received), (1.0, 2.0))  # echo; session.created + echo
        self.assertGreater(samples[("agw_realtime_bytes_total", frozenset({**ROUTE, "direction": "client_to_upstream"}.items()))], 1000)
        anonymous = frozenset({**ROUTE, "consumer": ""}.items())
        self.assertEqual(samples[("agw_realtime_session_duration_seconds_count", anonymous)], 1.0)
        self.assertEqual(samples[("agw_realtime_sessions", anonymous)], 0.0)


class OpenSessionCounterTests(AccountingTestCase):
    relay_options = RelayOptions(counter_flush_interval=0.05)

    @inlineCallbacks
    def test_open_sessions_messages_reach_the_metrics(self) -> Any:
        ws = yield deferToThread(open_client, self.url)
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        key = ("agw_realtime_messages_total", frozenset({**ROUTE, "direction": "upstream_to_client"}.items()))
        deadline = reactor.seconds() + 10
        while True:  # scrape until the flush shows session.created
            samples = yield self.scrape()
            if samples.get(key) == 1.0 or reactor.seconds() > deadline:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(samples.get(key), 1.0)
        self.assertEqual(len(self.gateway.relays[0].sessions), 1)  # still open


class AbandonedResponseTests(AccountingTestCase):
    relay_options = RelayOptions(cancel_grace=5.0)

    @inlineCallbacks
    def test_client_leaving_mid_response_still_counts_it(self) -> Any:
        self.fake.response_delay = 30.0  # only response.cancel ends it in time

        def leave_mid_response() -> None:
            ws = open_client(self.url)
            recv_event(ws)
            ws.send(json.dumps({"type": "response.create"}))
            while recv_event(ws)["type"] != "response.output_text.delta":
                pass
            ws.close(4000, "user hung up")

        yield deferToThread(leave_mid_response)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes, [(4000, "user hung up")])
        self.assertIn({"type": "response.cancel", "response_id": "resp_1"}, [json.loads(m) for m in self.fake.received])
        self.assertEqual(len(self.fake.ledger), 1)
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def leave_after(self, *events: dict[str, Any], wait_for: int = 0, close: int = 4000) -> Any:
        """Send C{events}, read until C{wait_for} responses were created, leave; wait until the fake saw the close."""

        def session() -> None:
            ws = open_client(self.url)
            recv_event(ws)
            for event in events:
                ws.send(json.dumps(event))
            created = 0
            while created < wait_for:
                created += recv_event(ws)["type"] == "response.created"
            ws.close(close, "bye")

        yield deferToThread(session)
        yield wait_until(lambda: self.fake.closes)

    @inlineCallbacks
    def test_response_asked_for_but_not_acknowledged_is_counted(self) -> Any:
        """The client leaves between its response.create and the provider's response.created."""
        self.fake.created_delay = 0.3
        self.fake.response_delay = 30.0
        yield self.leave_after({"type": "response.create"})
        self.assertEqual(len(self.fake.ledger), 1)
        self.assertEqual(self.fake.closes, [(4000, "bye")])
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_type_written_last_by_the_client_still_counts(self) -> Any:
        self.fake.created_delay = 0.3
        self.fake.response_delay = 30.0
        request = {"response": {"instructions": "Be brief. " * 60}, "event_id": "c1", "type": "response.create"}
        yield self.leave_after(request)
        self.assertEqual(len(self.fake.ledger), 1)
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_each_concurrent_and_out_of_band_response_is_cancelled_by_id(self) -> Any:
        self.fake.response_delay = 30.0  # only a cancel naming it ends the out-of-band one in time
        yield self.leave_after(
            {"type": "response.create"}, {"type": "response.create", "response": {"conversation": "none"}}, wait_for=2,
        )
        cancels = [json.loads(m) for m in self.fake.received if b"response.cancel" in m]
        self.assertEqual(sorted(c.get("response_id") for c in cancels), ["resp_1", "resp_2"])
        self.assertEqual([entry.usage["total_tokens"] > 0 for entry in self.fake.ledger], [True, True])
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_refused_response_create_is_not_waited_for(self) -> Any:
        """A response.create the provider answers with an error (echoing its event_id) will never bill."""
        self.fake.response_delay = 30.0

        def session() -> None:
            ws = open_client(self.url)
            recv_event(ws)
            ws.send(json.dumps({"type": "response.create"}))
            ws.send(json.dumps({"type": "response.create", "event_id": "second"}))
            while (event := recv_event(ws))["type"] != "error":
                pass
            assert event["error"]["event_id"] == "second", event
            ws.close(4000, "bye")

        yield deferToThread(session)
        # The session's record is written when agw's upstream leg has closed, which may be a
        # moment after the provider saw the close.
        yield wait_until(lambda: '"realtime.session"' in self.access_log.getvalue())
        (line,) = [json.loads(l) for l in self.access_log.getvalue().splitlines() if '"realtime.session"' in l]
        self.assertEqual((line["agw.responses"], line["agw.responses_unacknowledged"]), (1, 0))
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_server_started_response_is_counted(self) -> Any:
        """Server VAD starts a response no client event asked for; the client leaves during it."""
        self.fake.server_vad = True
        self.fake.response_delay = 30.0
        yield self.leave_after({"type": "input_audio_buffer.commit"}, wait_for=1)
        self.assertEqual(len(self.fake.ledger), 1)
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_provider_writing_type_last_is_counted(self) -> Any:
        self.fake.type_last = True

        def session() -> None:
            ws = open_client(self.url)
            recv_event(ws)
            for _ in range(3):
                ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["audio"]}}))
                while recv_event(ws)["type"] != "response.done":
                    pass
            ws.close()

        yield deferToThread(session)
        self.assertEqual(len(self.fake.ledger), 3)
        yield self.assert_ledger_on_metrics()

    @inlineCallbacks
    def test_vanished_client_mid_response(self) -> Any:
        import socket

        self.fake.response_delay = 30.0

        def vanish_mid_response() -> None:
            ws = open_client(self.url)
            recv_event(ws)
            ws.send(json.dumps({"type": "response.create"}))
            while recv_event(ws)["type"] != "response.output_text.delta":
                pass
            ws.socket.shutdown(socket.SHUT_RDWR)

        yield deferToThread(vanish_mid_response)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)
        self.assertEqual(len(self.fake.ledger), 1)
        yield self.assert_ledger_on_metrics()


class SessionBookkeepingTests(SynchronousTestCase):
    def session(self) -> RealtimeSession:
        return RealtimeSession(GatewayMetrics(), RouteLabels.of(0, "l", "r"), "m", lambda: 0.0)

    def test_unacknowledged_requests_are_bounded(self) -> None:
        """A client sending response.create without end costs bounded memory: past the limit they are refused."""
        session = self.session()
        sent = 0
        for i in range(10_000):
            if session.refusal() is not None:
                break
            session.response_requested(f"e{i}")
            sent += 1
        self.assertEqual(sent, MAX_UNACKNOWLEDGED)
        refused = session.refusal()
        self.assertEqual((refused.status, refused.code), (429, "rate_limit_exceeded"))
        session.response_started("resp_1")  # one acknowledged: room for one more
        self.assertIsNone(session.refusal())
        session.request_failed("e9")  # the provider refused one: it is no longer waited for
        self.assertEqual(session.responses_requested, MAX_UNACKNOWLEDGED - 2)

    def test_in_flight_ids_follow_created_and_done(self) -> None:
        session = self.session()
        session.response_requested(None)
        session.response_started("resp_1")
        session.response_started("resp_2")  # server VAD: asked for by nobody
        self.assertEqual((list(session.in_flight), session.responses_requested), (["resp_1", "resp_2"], 0))
        session.response_finished("resp_1", "completed", None)
        self.assertEqual(list(session.in_flight), ["resp_2"])
        self.assertTrue(session.awaiting_usage)
        session.response_finished("resp_2", "cancelled", None)
        self.assertFalse(session.awaiting_usage)
