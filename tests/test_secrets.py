"""
Secrets never leave: a session of every kind, then a scan of everything the
gateway wrote (log events, access log, metrics, error bodies, upstream
requests) for the backend key and the client's credentials.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from openai import OpenAI
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from websockets.exceptions import InvalidStatus

from tests.support import BACKEND_KEY, CLIENT_KEY, GatewayTestCase, open_client, recv_event, run_session


class SecretScanTests(GatewayTestCase):
    @inlineCallbacks
    def test_no_secret_anywhere(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        written: list[bytes] = []

        # Realtime through the SDK, a browser client with its key as a
        # subprotocol, a refused handshake, HTTP completions, a 400.
        yield deferToThread(run_session, self.ws_base, 2)

        def browser() -> None:
            with open_client(
                f"{self.ws_base}/realtime?model=m", additional_headers={},
                subprotocols=["realtime", f"openai-insecure-api-key.{CLIENT_KEY}"],
            ) as ws:
                recv_event(ws)

        yield deferToThread(browser)
        self.fake.refuse(401, b'{"error": {"message": "Incorrect API key provided"}}')

        def refused() -> None:
            try:
                open_client(f"{self.ws_base}/realtime?model=m").close()
            except InvalidStatus as e:
                written.append(e.response.body or b"")

        yield deferToThread(refused)

        def http() -> None:
            with OpenAI(api_key=CLIENT_KEY, base_url=self.http_base, max_retries=0) as client:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

        yield deferToThread(http)
        bad = yield treq.post(f"{self.http_base}/chat/completions", data=b"nope", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, persistent=False)
        written.append((yield bad.content()))
        metrics = yield self.metrics_text()

        everything = "\n".join(
            [formatEvent(e) + repr(e) for e in events]
            + [self.access_log.getvalue(), metrics]
            + [w.decode("utf-8", "replace") for w in written]
        )
        self.assertNotIn(BACKEND_KEY, everything)
        self.assertNotIn(CLIENT_KEY, everything)
        self.assertNotIn(CLIENT_KEY, repr(self.fake.handshakes) + repr(self.fake.http_requests))
        # The backend key goes upstream, and only there.
        self.assertTrue(all(h.headers["authorization"] == f"Bearer {BACKEND_KEY}" for h in self.fake.handshakes))

        records = [json.loads(line) for line in self.access_log.getvalue().splitlines()]
        kinds = [r["event"] for r in records]
        self.assertEqual(kinds.count("realtime.response"), 2)
        self.assertEqual(kinds.count("realtime.session"), 2)
        http = [r for r in records if r["event"] == "http"]
        self.assertEqual([r["http.status"] for r in http], [200, 400])
        self.assertEqual(http[0]["gen_ai.request.model"], "gpt-4")
        self.assertGreater(http[0]["gen_ai.usage.input_tokens"], 0)
        session = next(r for r in records if r["event"] == "realtime.session")
        self.assertEqual(session["agw.responses"], 2)
        self.assertEqual(session["websocket.close_code"], 1000)

    @inlineCallbacks
    def test_request_target_never_logged(self) -> Any:
        # A client that puts its key in the query string (as some SDKs do
        # for Azure) must not find it in the gateway's log: twisted.web's
        # own combined log line would write the whole request-target.
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        response = yield treq.post(
            f"{self.http_base}/chat/completions?api-key={CLIENT_KEY}",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "User-Agent": f"probe {CLIENT_KEY}"},
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        logged = "\n".join(formatEvent(e) + repr(e) for e in events) + self.access_log.getvalue()
        self.assertIn("http", self.access_log.getvalue())
        self.assertNotIn(CLIENT_KEY, logged)
