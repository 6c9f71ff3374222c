"""
The call supervisor (docs/webrtc.md): when a consumer's Block budget runs
out, the provider receives response.cancel for the response in flight (by
its id) and then a hang-up for the call; a sideband that drops is opened
again; one that cannot come back hangs the call up (failClosed) and the
call is counted as not metered whole; a call whose sideband cannot be
opened at all is hung up and refused.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.support import wait_until
from tests.webrtc_support import MODEL, VOICE_KEY, WebRTCCase, ledger_tokens

TOKEN_LIMIT = 100  # the fake's first audio response alone uses 106


class BudgetTests(WebRTCCase):
    voice_budget = {"name": "daily-tokens", "limit": {"unit": "Tokens", "amount": TOKEN_LIMIT}, "window": {"rolling": "24h"}}

    @inlineCallbacks
    def test_budget_runs_out_cancel_then_hang_up(self) -> Any:
        _, first, _ = yield self.browser_call()
        _, second, _ = yield self.browser_call()  # both admitted: nothing spent yet

        # The first call's caller speaks: its response spends the budget, and the call ends at once
        # (the provider starts responses on its own: the next turn could not be paid for).
        yield self.fake.drive_call(first)
        yield wait_until(lambda: self.fake.call(first).events[-1:] == [("detached", 1000)])
        self.assertEqual(self.fake.call(first).events, [("attached",), ("hangup",), ("detached", 1000)])

        # On the second call the provider starts a response after the budget is spent: cancelled by its id,
        # its usage (billed all the same) awaited, then the call is hung up.
        self.fake.response_delay = 30.0  # would run on, but for the cancel
        status = yield self.fake.drive_call(second)
        self.assertEqual(status, ["cancelled"])
        yield wait_until(lambda: second in self.fake.hangups)
        response_id = f"resp_{len(self.fake.ledger)}"
        events = self.fake.call(second).events
        self.assertEqual(events[:3], [("attached",), ("cancel", response_id), ("hangup",)])

        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="budget") == 2)
        spent = self.gateway.governor.states("voice-app")[0].spent
        self.assertEqual(spent, ledger_tokens(self.fake.ledger))  # every billed token was charged
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total"), 0)

        # Spent: no more secrets or calls for this consumer.
        status, body = yield self.client_secret()
        self.assertEqual((status, body["error"]["code"]), (429, "rate_limit_exceeded"))
        status, _, body = yield self.multipart_call(VOICE_KEY, {"type": "realtime", "model": MODEL})
        self.assertEqual(status, 429)


class SidebandTests(WebRTCCase):
    calls = {"sideband": {"reconnectAttempts": 2, "reconnectDelay": "10ms", "maxReconnectDelay": "20ms"}}

    @inlineCallbacks
    def test_dropped_sideband_reconnects(self) -> Any:
        token, call_id, location = yield self.browser_call()
        call = self.fake.call(call_id)
        call.sideband.transport.abortConnection()  # the connection breaks; the call goes on
        yield wait_until(lambda: call.events.count(("attached",)) == 2)
        yield self.fake.drive_call(call_id)
        yield wait_until(lambda: self.metric("agw_gen_ai_cost_usd_total", consumer="voice-app") > 0)
        self.assertEqual(self.metric("agw_realtime_sideband_reconnects_total", consumer="voice-app"), 1)
        self.assertEqual(self.fake.hangups, [])
        status, _, _ = yield self.post(location.removeprefix("/v1/realtime") + "/hangup", b"", "application/json", token)
        self.assertEqual(status, 200)
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="client_hangup") == 1)
        # What happened while the sideband was away was not seen: the call says so.
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total", consumer="voice-app"), 1)

    @inlineCallbacks
    def test_sideband_that_cannot_come_back_hangs_up(self) -> Any:
        _, call_id, _ = yield self.browser_call()
        call = self.fake.call(call_id)
        for _ in range(3):
            self.fake.refuse(503, b'{"error": {"message": "busy", "type": "server_error", "code": null}}')
        call.sideband.transport.abortConnection()
        yield wait_until(lambda: self.fake.hangups == [call_id])
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="sideband_lost") == 1)
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total", consumer="voice-app"), 1)
        self.assertEqual(self.metric("agw_realtime_calls"), 0)
        (line,) = [line for line in self.access_lines() if line["event"] == "realtime.call"]
        self.assertEqual((line["agw.call.end"], line["agw.call.metered"], line["agw.call.hangup_status"]), ("sideband_lost", False, 200))

    @inlineCallbacks
    def test_call_ending_at_the_provider_ends_its_supervision(self) -> Any:
        _, call_id, _ = yield self.browser_call()
        self.fake.call(call_id).hang_up()  # the caller left: the provider ends the call and its sideband
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="provider") == 1)
        self.assertEqual(self.fake.hangups, [])  # nothing to hang up
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total"), 0)

    @inlineCallbacks
    def test_call_without_a_sideband_is_hung_up_and_refused(self) -> Any:
        status, secret = yield self.client_secret()
        for _ in range(3):
            self.fake.refuse(500)
        status, _, body = yield self.open_call(secret["value"])
        self.assertEqual((status, json.loads(body)["error"]["code"]), (502, "sideband_unavailable"))
        (call_id,) = self.fake.calls
        self.assertEqual(self.fake.hangups, [call_id])
        self.assertEqual(self.metric("agw_realtime_calls_ended_total", end="unsupervised"), 1)


class FailOpenTests(WebRTCCase):
    calls = {"sideband": {"reconnectAttempts": 1, "reconnectDelay": "10ms", "failureMode": "failOpen"}}

    @inlineCallbacks
    def test_fail_open_leaves_the_call_unmetered(self) -> Any:
        _, call_id, _ = yield self.browser_call()
        for _ in range(2):
            self.fake.refuse(503)
        self.fake.call(call_id).sideband.transport.abortConnection()
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="sideband_lost") == 1)
        self.assertEqual(self.fake.hangups, [])  # the call goes on without agw
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total", consumer="voice-app"), 1)


class TranscriptionAndStopTests(WebRTCCase):
    @inlineCallbacks
    def test_transcription_on_a_call_is_metered(self) -> Any:
        _, call_id, _ = yield self.browser_call()
        # The browser turns transcription on: the sideband hears session.updated, as every connection of the session does.
        self.fake.call(call_id).update_session({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}})
        self.fake.transcription_usage = {"type": "tokens", "input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
                                         "input_token_details": {"text_tokens": 0, "audio_tokens": 12}}
        yield self.fake.drive_call(call_id)
        yield wait_until(lambda: self.metric(
            "agentgateway_gen_ai_client_token_usage_sum", gen_ai_operation_name="transcription", gen_ai_token_type="input",
        ) == 12)
        self.assertEqual(self.metric(
            "agw_gen_ai_tokens_total", gen_ai_operation_name="transcription", consumer="voice-app", gen_ai_request_model="gpt-4o-transcribe",
        ), 15)

    @inlineCallbacks
    def test_stopping_the_gateway_hangs_calls_up(self) -> Any:
        _, call_id, _ = yield self.browser_call()
        yield self.service.stopService()
        self.assertEqual(self.fake.hangups, [call_id])
        self.assertEqual(self.metric("agw_realtime_calls_ended_total", end="shutdown"), 1)
        yield wait_until(lambda: self.fake.call(call_id).sideband is None)
