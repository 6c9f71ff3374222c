"""
The SIP pieces on their own: the webhook signature (checked against
OpenAI's own SDK, so the fake and agw cannot merely agree with each other),
the deliveries kept against replays, reading a realtime.call.incoming event,
which line takes a call, the SIP status of each refusal, and the
realtimeCalls.sip config (whose errors never show the secret).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from openai.lib._webhooks import webhook_signature_matches
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from agw.calls._sip import sip_status
from agw.config import ConfigError, SIPLine, parse_config, signing_key
from agw.decisions import (
    DONE, NEW, PENDING, Deliveries, Delivery, IncomingCall, KeyRefused, WebhookRefused, incoming_call, line_for, sip_user,
    verify_delivery,
)
from agw.testing import FakeOpenAI
from tests.support import seed_config_text

NOW = 1_750_287_078
TOLERANCE = 300.0


class SignatureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeOpenAI()
        self.fake.reactor = Clock()
        self.key = signing_key(self.fake.webhook_secret)
        self.body = json.dumps({"type": "realtime.call.incoming", "data": {"call_id": "rtc_1", "sip_headers": []}}).encode()

    def verify(self, headers: dict[str, str], body: bytes | None = None, now: float = NOW) -> Delivery:
        return verify_delivery(self.key, headers.get, self.body if body is None else body, now, TOLERANCE)

    def test_the_fake_signs_as_openai_and_agw_verifies_as_openai(self) -> None:
        headers = self.fake.sign("wh_1", NOW, self.body)
        self.assertTrue(webhook_signature_matches(self.body, headers, secret=self.fake.webhook_secret, tolerance=10**10))
        self.assertEqual(self.verify(headers), Delivery("wh_1", NOW))
        # OpenAI's documented example shape: several signatures, any may match.
        several = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"] + " v1a,xyz"}
        self.assertEqual(self.verify(several).webhook_id, "wh_1")
        self.assertEqual(signing_key("plain-secret"), b"plain-secret")

    def test_refusals(self) -> None:
        good = self.fake.sign("wh_1", NOW, self.body)
        for headers, body, now, code in (
            ({**good, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, None, NOW, "invalid_signature"),
            ({**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")}, None, NOW, "invalid_signature"),
            (good, self.body + b" ", NOW, "invalid_signature"),  # the body changed
            ({**good, "webhook-id": "wh_2"}, None, NOW, "invalid_signature"),  # the id is signed
            ({k: v for k, v in good.items() if k != "webhook-id"}, None, NOW, "missing_signature"),
            ({**good, "webhook-timestamp": ""}, None, NOW, "missing_signature"),
            ({**good, "webhook-timestamp": "12.5"}, None, NOW, "invalid_timestamp"),
            ({**good, "webhook-timestamp": "١٢٣"}, None, NOW, "invalid_timestamp"),  # digits, not ASCII ones
            (good, None, NOW + TOLERANCE + 1, "invalid_timestamp"),
            (good, None, NOW - TOLERANCE - 1, "invalid_timestamp"),
            ({**good, "webhook-id": "w" * 300}, None, NOW, "invalid_signature"),
        ):
            with self.assertRaises(WebhookRefused) as refused:
                self.verify(headers, body, now)
            self.assertEqual((refused.exception.status, refused.exception.code), (401, code), headers)
        self.assertEqual(self.verify(good, now=NOW + TOLERANCE).timestamp, NOW)  # the window's edge is in it


class DeliveriesTests(SynchronousTestCase):
    def test_each_delivery_is_acted_on_once(self) -> None:
        seen = Deliveries(limit=2)
        first = Delivery("wh_1", NOW)
        self.assertEqual(seen.begin(first, TOLERANCE, NOW), NEW)
        self.assertEqual(seen.begin(first, TOLERANCE, NOW), PENDING)
        seen.finish(first)
        self.assertEqual(seen.begin(Delivery("wh_1", NOW + 5), TOLERANCE, NOW + 5), DONE)  # a retry: the same id
        failed = Delivery("wh_2", NOW)
        self.assertEqual(seen.begin(failed, TOLERANCE, NOW), NEW)
        seen.forget(failed)  # acting failed: the provider's retry acts
        self.assertEqual(seen.begin(failed, TOLERANCE, NOW), NEW)
        with self.assertRaises(WebhookRefused) as full:
            seen.begin(Delivery("wh_3", NOW), TOLERANCE, NOW)
        self.assertEqual(full.exception.status, 503)
        # Once out of the tolerance window a delivery is refused for its age: its id need not be kept.
        self.assertEqual(seen.begin(Delivery("wh_3", NOW + 400), TOLERANCE, NOW + 400), NEW)
        self.assertEqual(len(seen), 1)


class IncomingCallTests(SynchronousTestCase):
    def test_events(self) -> None:
        headers = [{"name": "From", "value": "sip:+1415@x"}, {"name": "To", "value": "<sip:+1800@x>"}, {"name": "n", "value": 1}]
        event = {"type": "realtime.call.incoming", "data": {"call_id": "rtc_1", "sip_headers": headers}}
        self.assertEqual(incoming_call(event), IncomingCall("rtc_1", (("From", "sip:+1415@x"), ("To", "<sip:+1800@x>"))))
        self.assertIsNone(incoming_call({"type": "batch.completed", "data": {}}))
        for bad in ([], {"data": {}}, {"type": "realtime.call.incoming"}, {"type": "realtime.call.incoming", "data": {"call_id": 1}}):
            with self.assertRaises(WebhookRefused):
                incoming_call(bad)

    def test_which_line_takes_a_call(self) -> None:
        for value, user in (
            ('"Bob" <sip:+18005550100@sip.example.com;transport=tls>;tag=1', "+18005550100"),
            ("sip:alice@example.com", "alice"), ("<tel:+18005550100;phone-context=x>", "+18005550100"),
            ("SIPS:+1@h", "+1"), ("nothing", None),
        ):
            self.assertEqual(sip_user(value), user, value)
        dialed = SIPLine('{"model": "m"}', to="+18005550100", consumer="a")
        header = SIPLine('{"model": "m"}', header=("X-Tenant", "acme"), consumer="b")
        default = SIPLine('{"model": "m"}')
        lines = (dialed, header, default)
        for headers, expected in (
            ((("To", "<sip:+18005550100@h>"),), dialed),
            ((("t", "sip:+18005550100@h"),), dialed),  # SIP's compact form
            ((("To", "<sip:+18005550101@h>"), ("x-tenant", "acme")), header),
            ((("To", "<sip:+18005550101@h>"), ("X-Tenant", "acme2")), default),
            ((("From", "<sip:+18005550100@h>"),), default),  # the caller's number is not the line's
        ):
            self.assertIs(line_for(lines, IncomingCall("rtc_1", headers)), expected, headers)
        self.assertIsNone(line_for((dialed, header), IncomingCall("rtc_1", ())))

    def test_sip_status_of_refusals(self) -> None:
        self.assertEqual([sip_status(KeyRefused(status, "m", "c")) for status in (429, 403, 401, 503)], [486, 403, 403, 503])


class ConfigTests(SynchronousTestCase):
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()

    def load(self, sip: Any, keys: Any = ({"key": "sk-1", "metadata": {"name": "voice-app"}},)) -> Any:
        data = yaml.safe_load(seed_config_text(1234))
        route = data["binds"][0]["listeners"][0]["routes"][0]
        route["policies"]["apiKey"] = {"keys": list(keys)}
        route["policies"]["realtimeCalls"] = {"sip": sip}
        loaded = parse_config(yaml.safe_dump(data), {"OPENAI_API_KEY": "k", "OPENAI_WEBHOOK_SECRET": self.secret})
        return loaded.binds[0].listeners[0].routes[0].policies.realtime_calls.sip

    def test_loads(self) -> None:
        sip = self.load({
            "webhookSecret": "$OPENAI_WEBHOOK_SECRET", "timestampTolerance": "1m",
            "lines": [{"to": "+1800", "consumer": "voice-app", "session": {"model": "gpt-realtime", "voice": "marin"}}, {"session": {"model": "m"}}],
        })
        self.assertEqual(sip.secret.value, self.secret)
        self.assertEqual(sip.tolerance, 60.0)
        self.assertEqual(sip.lines[0], SIPLine('{"model": "gpt-realtime", "voice": "marin"}', "+1800", None, "voice-app"))
        self.assertEqual(sip.lines[0].session_config, {"model": "gpt-realtime", "voice": "marin"})
        self.assertNotIn(self.secret, repr(sip))

    def test_refused(self) -> None:
        line = {"session": {"model": "m"}}
        for sip, where in (
            ({"lines": [line]}, "webhookSecret"),
            ({"webhookSecret": "whsec_not base64!", "lines": [line]}, "webhookSecret"),
            ({"webhookSecret": "whsec_", "lines": [line]}, "webhookSecret"),
            ({"webhookSecret": self.secret, "lines": []}, "lines"),
            ({"webhookSecret": self.secret, "timestampTolerance": "1s", "lines": [line]}, "timestampTolerance"),
            ({"webhookSecret": self.secret, "lines": [{"session": {"voice": "x"}}]}, "lines[0].session.model"),
            ({"webhookSecret": self.secret, "lines": [{"session": {"model": "m", "type": "transcription"}}]}, "lines[0].session.type"),
            ({"webhookSecret": self.secret, "lines": [{**line, "consumer": "nobody"}]}, "lines[0].consumer"),
            ({"webhookSecret": self.secret, "lines": [{**line, "to": "+1", "header": {"name": "a", "value": "b"}}]}, "lines[0]"),
            ({"webhookSecret": self.secret, "lines": [{**line, "number": "+1"}]}, "lines[0].number"),
        ):
            with self.assertRaises(ConfigError) as refused:
                self.load(sip)
            self.assertIn(f"realtimeCalls.sip.{where}", str(refused.exception))
            self.assertNotIn("not base64!", str(refused.exception))
