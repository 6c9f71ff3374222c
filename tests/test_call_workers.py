"""
Calls under C{twistd -n agw --workers 2} (docs/webrtc.md, "Several
processes"): each connection lands on whichever worker the kernel picks, and
the user's flow works all the same — a client secret minted on one worker
opens a call or a WebSocket session on the other, a hang-up reaching the
worker that does not supervise the call is carried out by the one that does,
an incoming SIP call is answered once whichever worker each delivery of its
webhook reaches. A worker that dies has its calls adopted by the other (a new
sideband, metered on; the call counted as not metered whole); stopping the
gateway hangs its calls up.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import TwistdAgw, listening_fake, open_client, recv_event, wait_until
from tests.test_workers import samples_now
from tests.webrtc_support import MODEL, OFFER, OTHER_KEY, VOICE_KEY

LINES = [{"to": "+18005550100", "consumer": "voice-app", "session": {"model": MODEL, "instructions": "Hello."}}]
ROUNDS = 40  # each round has one chance in two of crossing workers: more than enough to see each way crossed


def with_calls(config: dict[str, Any]) -> None:
    """The seed's Realtime route with client keys and SIP lines (the webhook secret from the environment)."""
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"]["apiKey"] = {"mode": "strict", "keys": [
        {"key": VOICE_KEY, "metadata": {"name": "voice-app"}, "allowedModels": ["gpt-realtime*"]},
        {"key": OTHER_KEY, "metadata": {"name": "other"}},
    ]}
    route["policies"]["realtimeCalls"] = {
        "sideband": {"reconnectDelay": "10ms", "maxReconnectDelay": "40ms"},
        "sip": {"webhookSecret": "$OPENAI_WEBHOOK_SECRET", "lines": LINES},
    }


class CallWorkersTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream = yield listening_fake(self)
        self.agw = yield TwistdAgw.start(
            self, upstream, "--workers", "2", access_log="json", edit=with_calls,
            environ={"OPENAI_WEBHOOK_SECRET": self.fake.webhook_secret},
        )
        # Stopped (not killed) at the end: its connections to the fake close before the reactor is checked.
        self.addCleanup(lambda: self.agw.stop() if self.agw.process.poll() is None else None)
        yield wait_until(lambda: samples_now(self.agw).get(("agw_workers_ready", frozenset())) == 2.0, timeout=30)
        self.base = f"http://127.0.0.1:{self.agw.port}/v1/realtime"
        self.minted = 0

    def records(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The access log's records of C{event} with C{fields} (the pool passes each worker's lines on whole)."""
        with open(self.agw.stdout) as f:
            found = [json.loads(line) for line in f if line.strip()]
        return [r for r in found if r["event"] == event and all(r.get(k) == v for k, v in fields.items())]

    @inlineCallbacks
    def served(self, event: str, count: int, **fields: Any) -> Any:
        """The worker of the C{count}th record of C{event} with C{fields}, once it is logged."""
        yield wait_until(lambda: len(self.records(event, **fields)) >= count)
        return self.records(event, **fields)[count - 1]["agw.worker"]

    @inlineCallbacks
    def post(self, path: str, body: bytes, content_type: str, bearer: str) -> Any:
        """POST on a new connection (so the kernel picks a worker for it); fires with (status, headers, body)."""
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {bearer}"}
        response = yield treq.post(f"{self.base}{path}", data=body, headers=headers, persistent=False)
        return response.code, response.headers, (yield response.content())

    @inlineCallbacks
    def mint(self) -> Any:
        """A client secret: fires with (the token, the worker that minted it)."""
        body = json.dumps({"session": {"type": "realtime", "model": MODEL}}).encode()
        status, _, content = yield self.post("/client_secrets", body, "application/json", VOICE_KEY)
        self.assertEqual(status, 200, content)
        self.minted += 1
        minted_on = yield self.served("http", self.minted, **{"http.path": "/v1/realtime/client_secrets"})
        return json.loads(content)["value"], minted_on

    def tokens(self, consumer: str) -> float:
        """agw_gen_ai_tokens_total of C{consumer} on the pool's /metrics (every worker's, the dead ones' too)."""
        return sum(v for (name, labels), v in samples_now(self.agw).items() if name == "agw_gen_ai_tokens_total" and ("consumer", consumer) in labels)

    @inlineCallbacks
    def test_secrets_calls_and_hang_ups_work_on_whichever_worker(self) -> Any:
        crossed = set()
        for round_ in range(1, ROUNDS + 1):
            token, minted_on = yield self.mint()
            status, headers, body = yield self.post("/calls", OFFER.encode(), "application/sdp", token)
            self.assertEqual(status, 201, body)  # whichever worker minted the token
            call_id = headers.getRawHeaders(b"location")[0].decode().rsplit("/", 1)[-1]
            called_on = yield self.served("http", round_, **{"http.path": "/v1/realtime/calls"})
            status, _, body = yield self.post(f"/calls/{call_id}/hangup", b"", "application/json", token)
            self.assertEqual(status, 200, body)  # whichever worker supervises the call
            self.assertIn(call_id, self.fake.hangups)
            hung_up_on = yield self.served("http", 1, **{"http.path": f"/v1/realtime/calls/{call_id}/hangup"})
            supervised_on = yield self.served("realtime.call", 1, **{"agw.call_id": call_id})
            self.assertEqual(supervised_on, called_on)  # a call is supervised where it was made
            self.assertEqual(self.records("realtime.call", **{"agw.call_id": call_id})[0]["agw.call.end"], "client_hangup")
            if minted_on != called_on:
                crossed.add("secret")
            if hung_up_on != supervised_on:
                crossed.add("hangup")
            if crossed == {"secret", "hangup"}:
                break
        self.assertEqual(crossed, {"secret", "hangup"})
        # Someone else's call is not theirs to hang up, on any worker.
        token, _ = yield self.mint()
        status, headers, _ = yield self.post("/calls", OFFER.encode(), "application/sdp", token)
        call_id = headers.getRawHeaders(b"location")[0].decode().rsplit("/", 1)[-1]
        for _ in range(6):
            status, _, body = yield self.post(f"/calls/{call_id}/hangup", b"", "application/json", OTHER_KEY)
            self.assertEqual((status, json.loads(body)["error"]["code"]), (404, "call_not_found"))
        self.assertNotIn(call_id, self.fake.hangups)

        # A token is a client key of the WebSocket route on either worker too.
        url = f"ws://127.0.0.1:{self.agw.port}/v1/realtime?model={MODEL}"

        def session(token: str) -> None:
            with open_client(url, additional_headers={}, subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "response.create"}))
                while recv_event(ws)["type"] != "response.done":
                    pass

        for round_ in range(1, ROUNDS + 1):
            token, minted_on = yield self.mint()
            yield deferToThread(session, token)
            session_on = yield self.served("realtime.session", round_, **{"agw.transport": "websocket"})
            if session_on != minted_on:
                break
        self.assertNotEqual(session_on, minted_on)

    @inlineCallbacks
    def test_sip_call_taken_once_and_adopted_when_its_worker_dies(self) -> Any:
        webhook = f"{self.base}/webhook"
        first = yield self.fake.ring(webhook)
        self.assertEqual((first.status, first.json), (200, {"status": "accepted"}))
        answered_on = yield self.served("http", 1, **{"http.path": "/v1/realtime/webhook"})
        # OpenAI's retries, whichever worker they reach: nothing twice.
        for count in range(2, ROUNDS + 2):
            again = yield self.fake.redeliver(first)
            self.assertEqual((again.status, again.json), (200, {"status": "duplicate"}))
            if (yield self.served("http", count, **{"http.path": "/v1/realtime/webhook"})) != answered_on:
                break
        self.assertEqual(len({r["agw.worker"] for r in self.records("http", **{"http.path": "/v1/realtime/webhook"})}), 2)
        self.assertEqual(self.fake.accepts, [first.call_id])
        call = self.fake.call(first.call_id)
        yield wait_until(lambda: call.events == [("accepted",), ("attached",)])
        yield self.fake.drive_call(first.call_id)
        yield wait_until(lambda: self.tokens("voice-app") > 0)

        # The worker that supervises the call dies: the other one adopts it at once (a new sideband).
        pids = {int(n): int(pid) for n, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.agw.log_text())}
        os.kill(pids[answered_on], signal.SIGKILL)
        yield wait_until(lambda: call.events.count(("attached",)) == 2, timeout=30)
        self.assertEqual(call.events[2][0], "detached")
        self.assertEqual(self.fake.hangups, [])  # the call went on
        yield self.fake.drive_call(first.call_id, responses=2)  # metered by the adopter
        billed = sum(e.usage["input_tokens"] + e.usage["output_tokens"] + e.usage["input_token_details"]["cached_tokens"] for e in self.fake.ledger)
        yield wait_until(lambda: self.tokens("voice-app") == billed)

        # Its consumer hangs it up through agw (the adopter carries it out); it says it was not metered whole.
        status, _, body = yield self.post(f"/calls/{first.call_id}/hangup", b"", "application/json", VOICE_KEY)
        self.assertEqual(status, 200, body)
        self.assertEqual(self.fake.hangups, [first.call_id])
        yield wait_until(lambda: self.records("realtime.call", **{"agw.call_id": first.call_id}))
        (ended,) = self.records("realtime.call", **{"agw.call_id": first.call_id})
        self.assertNotEqual(ended["agw.worker"], answered_on)
        self.assertEqual((ended["agw.transport"], ended["agw.call.end"], ended["agw.call.metered"]), ("sip", "client_hangup", False))

        # Stopping the gateway (a restart) hangs its calls up.
        second = yield self.fake.ring(webhook)
        self.assertEqual(second.json, {"status": "accepted"})
        yield wait_until(lambda: self.fake.call(second.call_id).events[-1:] == [("attached",)])
        code = yield self.agw.stop()
        self.assertEqual(code, 0)
        self.assertEqual(self.fake.hangups, [first.call_id, second.call_id])
        written = self.agw.log_text()
        self.assertNotIn(self.fake.webhook_secret, written)
        self.assertNotIn(VOICE_KEY, written)
        with open(self.agw.stdout) as f:
            self.assertNotIn(self.fake.webhook_secret, f.read())
