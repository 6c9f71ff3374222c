"""
WebRTC calls through agw (docs/webrtc.md): a browser-style client gets agw's
own client secret, opens a call with it, and the responses the fake drives
on that call (never relayed by agw) are metered from the call's sideband
with the consumer, priced exactly; the provider's secret never reaches the
client; the secret is a client key on the WebSocket route too, and expires.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from agw.testing import SDP_ANSWER
from tests.support import BACKEND_KEY, handshake_status, open_client, recv_event, wait_until
from tests.webrtc_support import MODEL, OTHER_KEY, VOICE_KEY, WebRTCCase, backend_key_used, drive_metered


class BrowserCallTests(WebRTCCase):
    @inlineCallbacks
    def test_browser_call_is_metered_priced_and_hung_up(self) -> Any:
        token, call_id, location = yield self.browser_call()
        self.assertTrue(token.startswith("agw_ek_"))
        self.assertEqual(location, f"/v1/realtime/calls/{call_id}")
        self.assertIn(call_id, self.fake.calls)
        answer = self.seen[-1]
        self.assertEqual(answer[1], SDP_ANSWER.encode())
        self.assertEqual(answer[0].getRawHeaders(b"content-type"), [b"application/sdp"])
        self.assertEqual(answer[0].getRawHeaders(b"access-control-expose-headers"), [b"Location"])
        call = self.fake.call(call_id)
        self.assertEqual(call.events, [("attached",)])  # the sideband was open before the browser had its answer

        # The provider's secret was minted with the backend key and used for the offer; the client never saw it.
        self.assertEqual(backend_key_used(self.fake, "/v1/realtime/client_secrets"), [f"Bearer {BACKEND_KEY}"])
        (provider_secret,) = self.fake.client_secrets
        self.assertEqual(backend_key_used(self.fake, "/v1/realtime/calls"), [f"Bearer {provider_secret}"])
        self.assertEqual(self.exposed(provider_secret), [])

        yield drive_metered(self, call_id, "voice-app")  # the browser speaks twice; agw relays nothing
        self.assertEqual(self.metric("agentgateway_gen_ai_client_token_usage_count", gen_ai_token_type="output"), 2)
        self.assertEqual(self.metric("agw_realtime_calls", consumer="voice-app", state="attached"), 1)

        status, _, _ = yield self.post(location.removeprefix("/v1/realtime") + "/hangup", b"", "application/json", token)
        self.assertEqual(status, 200)
        self.assertEqual(self.fake.hangups, [call_id])
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="client_hangup") == 1)
        self.assertEqual(self.metric("agw_realtime_calls", consumer="voice-app"), 0)
        self.assertEqual(self.metric("agw_realtime_calls_unmetered_total"), 0)
        self.assertEqual(len(self.gateway.calls), 0)

        lines = self.access_lines()
        responses = [line for line in lines if line["event"] == "realtime.response"]
        self.assertEqual([(r["agw.transport"], r["agw.consumer"], r["status"]) for r in responses], [("webrtc", "voice-app", "completed")] * 2)
        (session,) = [line for line in lines if line["event"] == "realtime.session"]
        self.assertEqual((session["agw.call_id"], session["agw.transport"], session["agw.responses"]), (call_id, "webrtc", 2))
        (ended,) = [line for line in lines if line["event"] == "realtime.call"]
        self.assertEqual((ended["agw.call.end"], ended["agw.call.metered"], ended["agw.consumer"]), ("client_hangup", True, "voice-app"))
        self.assertNotIn(provider_secret, self.access.getvalue())
        self.assertNotIn(token, self.access.getvalue())

    @inlineCallbacks
    def test_multipart_offer_with_a_client_key(self) -> Any:
        status, headers, body = yield self.multipart_call(VOICE_KEY, {"type": "realtime", "model": MODEL, "instructions": "Hi"})
        self.assertEqual(status, 201, body)
        call_id = headers.getRawHeaders(b"location")[0].decode().rsplit("/", 1)[-1]
        self.assertEqual(backend_key_used(self.fake, "/v1/realtime/calls"), [f"Bearer {BACKEND_KEY}"])
        self.assertEqual(self.fake.call(call_id).session, {"type": "realtime", "model": MODEL, "instructions": "Hi"})
        yield self.fake.drive_call(call_id)
        yield wait_until(lambda: self.metric("agw_gen_ai_cost_usd_total", consumer="voice-app") > 0)

        # What cannot be used, each refused before the provider hears of it.
        calls = len(self.fake.calls)
        refused = yield self.multipart_call(VOICE_KEY, {"type": "realtime", "model": "gpt-4o"})
        self.assertEqual((refused[0], json.loads(refused[2])["error"]["code"]), (403, "model_not_allowed"))
        refused = yield self.multipart_call(VOICE_KEY, {"type": "realtime"})
        self.assertEqual((refused[0], json.loads(refused[2])["error"]["code"]), (400, "model_required"))
        refused = yield self.post("/calls", b"v=0\r\n", "application/sdp", VOICE_KEY)
        self.assertEqual((refused[0], json.loads(refused[2])["error"]["code"]), (400, "client_secret_required"))
        refused = yield self.post("/calls", b"v=0\r\n", "text/plain", VOICE_KEY)
        self.assertEqual(refused[0], 415)
        refused = yield self.multipart_call("sk-unknown", {"type": "realtime", "model": MODEL})
        self.assertEqual(refused[0], 401)
        self.assertEqual(len(self.fake.calls), calls)

    @inlineCallbacks
    def test_client_secret_checks(self) -> Any:
        status, secret = yield self.client_secret(expires_after={"anchor": "created_at", "seconds": 7200})
        self.assertEqual(status, 200)
        minted = self.fake.http_requests[-1].json
        self.assertEqual(minted["expires_after"], {"anchor": "created_at", "seconds": 600})  # capped
        self.assertEqual(minted["session"], {"type": "realtime", "model": MODEL, "instructions": "Be brief."})
        self.assertLessEqual(secret["expires_at"], reactor.seconds() + 600)
        self.assertNotIn("client_secret", secret["session"])

        for request, expected in (
            ({"key": "sk-nope"}, (401, "invalid_api_key")),
            ({"model": "gpt-4o"}, (403, "model_not_allowed")),
            ({"expires_after": {"seconds": 5}}, (400, "invalid_request_error")),
            ({"key": secret["value"]}, (403, "client_secret_not_allowed")),  # a secret cannot renew itself
        ):
            status, body = yield self.client_secret(**request)
            self.assertEqual((status, body["error"]["code"]), expected, request)
        response = yield self.post("/client_secrets", b"[]", "application/json", VOICE_KEY)
        self.assertEqual(response[0], 400)
        self.assertEqual(len(self.fake.client_secrets), 1)

    @inlineCallbacks
    def test_client_secret_is_a_client_key_on_the_websocket_route_and_expires(self) -> Any:
        status, secret = yield self.client_secret()
        token = secret["value"]
        url = f"ws://127.0.0.1:{self.port}/v1/realtime?model={MODEL}"

        def session() -> dict[str, Any]:
            with open_client(url, additional_headers={}, subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "response.create"}))
                while (event := recv_event(ws))["type"] != "response.done":
                    pass
                return event

        done = yield deferToThread(session)
        self.assertEqual(done["response"]["status"], "completed")
        yield wait_until(lambda: self.metric("agw_gen_ai_tokens_total", consumer="voice-app") > 0)
        self.assertNotIn(token, json.dumps([h.headers for h in self.fake.handshakes]))
        other_model = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime-mini"
        status, _ = yield deferToThread(handshake_status, other_model, additional_headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(status, 403)

        self.gateway.tokens.clock = lambda: reactor.seconds() + 601  # later than the secret's life
        status, body = yield deferToThread(handshake_status, url, additional_headers={"Authorization": f"Bearer {token}"})
        self.assertEqual((status, json.loads(body)["error"]["code"]), (401, "expired_client_secret"))
        status, _, body = yield self.open_call(token)
        self.assertEqual(status, 401)

    @inlineCallbacks
    def test_provider_refusals_are_passed_on_without_its_secret(self) -> Any:
        status, secret = yield self.client_secret()
        (provider_secret,) = self.fake.client_secrets
        self.fake.fail_http(401, json.dumps({"error": {
            "message": f"Incorrect API key provided: {provider_secret}", "type": "invalid_request_error", "code": "invalid_api_key",
        }}).encode())
        status, headers, body = yield self.open_call(secret["value"])
        self.assertEqual((status, json.loads(body)["error"]["code"]), (401, "invalid_api_key"))
        self.assertEqual(json.loads(body)["error"]["message"], "Incorrect API key provided: ek_<redacted>")
        self.fake.fail_http(500, b"<html>oops</html>")
        status, _, body = yield self.open_call(secret["value"])
        self.assertEqual((status, json.loads(body)["error"]["code"]), (500, "upstream_error"))
        self.assertEqual(self.exposed(provider_secret), [])
        self.assertEqual(len(self.gateway.calls), 0)

    @inlineCallbacks
    def test_only_its_consumer_hangs_a_call_up(self) -> Any:
        token, call_id, location = yield self.browser_call()
        path = location.removeprefix("/v1/realtime") + "/hangup"
        status, _, body = yield self.post(path, b"", "application/json", OTHER_KEY)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (404, "call_not_found"))
        status, _, _ = yield self.post("/calls/rtc_unknown/hangup", b"", "application/json", VOICE_KEY)
        self.assertEqual(status, 404)
        self.assertEqual(self.fake.hangups, [])
        status, _, _ = yield self.post(path, b"", "application/json", VOICE_KEY)  # the key that minted the secret
        self.assertEqual(status, 200)
        self.assertEqual(self.fake.hangups, [call_id])
