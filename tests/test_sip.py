"""
Phone calls through agw (docs/webrtc.md, SIP): the fake rings, and POSTs
OpenAI's signed realtime.call.incoming webhook to agw over loopback; a bad
signature is refused and nothing else happens; a good one is accepted with
the line's session, supervised from its sideband, metered with the line's
consumer and priced exactly; a replay or a retry does nothing twice; a call
no line takes, or whose consumer's budget is spent, is rejected; a budget
that runs out mid-call cancels the response in flight and hangs up.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from agw.metering import AccessLog
from agw.testing import DIALED
from tests.support import BACKEND_KEY, listening_fake, running_gateway, wait_until
from tests.webrtc_support import MODEL, VOICE_KEY, WebRTCCase, backend_key_used, drive_metered, ledger_tokens, webrtc_config

SALES = "sales"
LINES = [
    {"to": DIALED, "consumer": "voice-app", "session": {"model": MODEL, "instructions": "You answer the phone."}},
    {"header": {"name": "X-Line", "value": SALES}, "consumer": "other", "session": {"type": "realtime", "model": MODEL}},
]


def sip_calls(**sip: Any) -> dict[str, Any]:
    """A realtimeCalls policy with SIP lines (the webhook secret from the environment, as in production)."""
    return {
        "sideband": {"reconnectDelay": "10ms", "maxReconnectDelay": "40ms"},
        "sip": {"webhookSecret": "$OPENAI_WEBHOOK_SECRET", "lines": LINES, **sip},
    }


class SIPCase(WebRTCCase):
    """A fake provider that rings, and agw with SIP lines on the seed's Realtime route."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db") if self.voice_budget is not None else None
        config = webrtc_config(self.upstream_port, database, self.voice_budget, sip_calls())
        self.access = io.StringIO()
        environ = {"OPENAI_API_KEY": BACKEND_KEY, "OPENAI_WEBHOOK_SECRET": self.fake.webhook_secret}
        self.gateway, self.service, self.port = yield running_gateway(self, config, environ, access_log=AccessLog(self.access))
        self.base = f"http://127.0.0.1:{self.port}/v1/realtime"
        self.webhook = f"{self.base}/webhook"
        self.seen = []

    @inlineCallbacks
    def answered_call(self, **ring: Any) -> Any:
        """A call that agw accepted and follows: fires with its id."""
        delivery = yield self.fake.ring(self.webhook, **ring)
        self.assertEqual((delivery.status, delivery.json), (200, {"status": "accepted"}))
        call = self.fake.call(delivery.call_id)
        yield wait_until(lambda: call.events[-1:] == [("attached",)])
        return delivery.call_id


class IncomingCallTests(SIPCase):
    @inlineCallbacks
    def test_bad_signature_is_refused_a_good_one_is_accepted_and_metered(self) -> Any:
        now = int(reactor.seconds())
        for refused in (
            self.fake.ring(self.webhook, secret="whsec_" + "QUJD" * 8),  # another project's secret
            self.fake.ring(self.webhook, signature="v1,bm90IGEgc2lnbmF0dXJl"),
            self.fake.ring(self.webhook, signature="v2," + "A" * 44),
            self.fake.ring(self.webhook, timestamp=now - 600),  # signed, but too old: a replay
            self.fake.ring(self.webhook, timestamp=now + 600),
        ):
            delivery = yield refused
            self.assertEqual(delivery.status, 401, delivery.answer)
            self.assertTrue(self.fake.call(delivery.call_id).ringing)  # nothing else happened
        unsigned = yield self.fake.deliver(self.webhook, b"{}", signature="")
        self.assertEqual(unsigned.status, 401)
        self.assertEqual((self.fake.accepts, self.fake.rejects, len(self.gateway.calls)), ([], [], 0))

        call_id = yield self.answered_call()
        self.assertEqual(self.fake.accepts, [call_id])
        (accept,) = [r for r in self.fake.http_requests if r.uri.endswith("/accept")]
        self.assertEqual(accept.uri, f"/v1/realtime/calls/{call_id}/accept")
        self.assertEqual(accept.json, {"type": "realtime", "model": MODEL, "instructions": "You answer the phone."})
        self.assertEqual(backend_key_used(self.fake, accept.uri), [f"Bearer {BACKEND_KEY}"])

        yield drive_metered(self, call_id, "voice-app")  # the caller speaks twice; agw relays nothing
        self.assertEqual(self.metric("agw_realtime_calls", consumer="voice-app", state="attached"), 1)

        self.fake.call(call_id).hang_up()  # the caller hangs up: the provider ends the call
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="provider") == 1)
        self.assertEqual(self.fake.hangups, [])
        lines = self.access_lines()
        responses = [line for line in lines if line["event"] == "realtime.response"]
        self.assertEqual([(r["agw.transport"], r["agw.consumer"]) for r in responses], [("sip", "voice-app")] * 2)
        (ended,) = [line for line in lines if line["event"] == "realtime.call"]
        self.assertEqual((ended["agw.call_id"], ended["agw.transport"], ended["agw.call.metered"]), (call_id, "sip", True))
        webhooks = [line for line in lines if line["event"] == "http" and line["http.path"] == "/v1/realtime/webhook"]
        self.assertEqual([line["http.status"] for line in webhooks], [401] * 6 + [200])
        self.assertNotIn(self.fake.webhook_secret, self.access.getvalue())

    @inlineCallbacks
    def test_replayed_or_retried_webhook_does_nothing_twice(self) -> Any:
        first = yield self.fake.ring(self.webhook)
        self.assertEqual(first.json, {"status": "accepted"})
        again = yield self.fake.replay(first)  # byte for byte, within the tolerance
        retried = yield self.fake.redeliver(first)  # OpenAI's retry: the same webhook-id, signed anew
        other_id = yield self.fake.deliver(self.webhook, first.body)  # the same call under a new webhook-id
        for delivery in (again, retried, other_id):
            self.assertEqual((delivery.status, delivery.json), (200, {"status": "duplicate"}))
        self.assertEqual(self.fake.accepts, [first.call_id])
        self.assertEqual(len(self.gateway.calls), 1)
        yield wait_until(lambda: self.fake.call(first.call_id).events == [("accepted",), ("attached",)])

    @inlineCallbacks
    def test_calls_no_line_takes_are_rejected_and_lines_pick_consumers(self) -> Any:
        unknown = yield self.fake.ring(self.webhook, to="+18005550199")
        self.assertEqual((unknown.status, unknown.json), (200, {"status": "rejected", "sip_status": 404}))
        self.assertEqual(self.fake.rejects, [(unknown.call_id, 404)])
        self.assertEqual(self.fake.call(unknown.call_id).events, [("rejected", 404)])
        sales = yield self.answered_call(to="+18005550123", headers=(("x-line", SALES),))  # header names in any case
        yield self.fake.drive_call(sales)
        yield wait_until(lambda: self.metric("agw_gen_ai_cost_usd_total", consumer="other") > 0)
        self.assertEqual(self.metric("agw_gen_ai_cost_usd_total", consumer="voice-app"), 0)
        self.assertEqual(self.fake.accepts, [sales])

        # Events of other types are the project's, not agw's: acknowledged, nothing done.
        other = yield self.fake.deliver(self.webhook, json.dumps({"object": "event", "id": "evt_1", "type": "batch.completed", "data": {}}).encode())
        self.assertEqual((other.status, other.json), (200, {"status": "ignored"}))
        broken = yield self.fake.deliver(self.webhook, b'{"type": "realtime.call.incoming", "data": {}}')
        self.assertEqual(broken.status, 400)
        # Clients do not answer phone calls through agw: agw does.
        status, _, body = yield self.post(f"/calls/{unknown.call_id}/accept", b"{}", "application/json", VOICE_KEY)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (403, "not_allowed"))

    @inlineCallbacks
    def test_provider_failure_is_retried_by_the_provider(self) -> Any:
        self.fake.fail_http(500)
        first = yield self.fake.ring(self.webhook)
        self.assertEqual(first.status, 502)  # not acknowledged: OpenAI delivers it again
        self.assertEqual(len(self.gateway.calls), 0)
        retried = yield self.fake.redeliver(first)
        self.assertEqual(retried.json, {"status": "accepted"})
        self.assertEqual(self.fake.accepts, [first.call_id])


TOKEN_LIMIT = 100  # the fake's first audio response alone uses 106


class SIPBudgetTests(SIPCase):
    voice_budget = {"name": "daily-tokens", "limit": {"unit": "Tokens", "amount": TOKEN_LIMIT}, "window": {"rolling": "24h"}}

    @inlineCallbacks
    def test_budget_runs_out_mid_call_then_calls_are_rejected(self) -> Any:
        first = yield self.answered_call()
        second = yield self.answered_call()  # both accepted: nothing spent yet

        # The first caller's response spends the budget: that call is hung up at once.
        yield self.fake.drive_call(first)
        yield wait_until(lambda: self.fake.call(first).events[-1:] == [("detached", 1000)])
        self.assertEqual(self.fake.call(first).events, [("accepted",), ("attached",), ("hangup",), ("detached", 1000)])

        # On the second call the provider starts a response after the budget is spent: cancelled by its id,
        # its usage awaited (billed all the same), then the call is hung up.
        self.fake.response_delay = 30.0
        status = yield self.fake.drive_call(second)
        self.assertEqual(status, ["cancelled"])
        yield wait_until(lambda: second in self.fake.hangups)
        events = self.fake.call(second).events
        self.assertEqual(events[:4], [("accepted",), ("attached",), ("cancel", f"resp_{len(self.fake.ledger)}"), ("hangup",)])
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="budget") == 2)
        self.assertEqual(self.gateway.governor.states("voice-app")[0].spent, ledger_tokens(self.fake.ledger))

        # Spent: the next call for this consumer is rejected (busy), and never supervised.
        third = yield self.fake.ring(self.webhook)
        self.assertEqual((third.status, third.json), (200, {"status": "rejected", "sip_status": 486}))
        self.assertEqual(self.fake.rejects, [(third.call_id, 486)])
        self.assertEqual(len(self.gateway.calls), 0)
