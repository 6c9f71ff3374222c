"""
The admin page's JSON on adminAddr (docs/admin.md): live sessions with
their consumer and cost, consumers' budgets, routes' rate limits, recent
costs, never a key; ending a session closes it 1000 as a shutdown would,
its responses in flight still metered; what a page on another origin may
not do. The page itself in a browser: tests/test_admin_browser.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
from decimal import Decimal
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.metering import AccessLog, RecentCosts
from agw.serve._admin_page import ADMIN_MAX_BODY, host_allowed, same_origin
from tests.support import BACKEND_KEY, listening_fake, open_client, recv_event, running_gateway, seed_config_text, wait_closed, wait_until
from tests.webrtc_support import VOICE_KEY, WebRTCCase

TEAM_KEY = "sk-agw-team-a-SECRET-admin"
OTHER_KEY = "sk-agw-team-b-SECRET-admin"


def admin_config(upstream_port: int, database: str) -> str:
    """The seed config with two named keys (one with budgets), a rate limit on the Realtime route, a ledger."""
    data = yaml.safe_load(seed_config_text(upstream_port))
    data["config"]["database"] = {"url": database}
    keys = [
        {"key": TEAM_KEY, "metadata": {"name": "team-a"}, "budgets": [
            {"name": "daily-usd", "limit": {"unit": "USD", "amount": "5"}, "window": {"rolling": "24h"}},
        ]},
        {"key": OTHER_KEY, "metadata": {"name": "team-b"}},
    ]
    for route in data["binds"][0]["listeners"][0]["routes"]:
        route["policies"]["apiKey"] = {"mode": "strict", "keys": keys}
    data["binds"][0]["listeners"][0]["routes"][0]["policies"]["localRateLimit"] = [
        {"maxTokens": 100, "tokensPerFill": 10, "fillInterval": "1s", "type": "requests"},
    ]
    return yaml.safe_dump(data)


def respond(ws: Any) -> dict[str, Any]:
    """One response, to its response.done."""
    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while (event := recv_event(ws))["type"] != "response.done":
        pass
    return event


class AdminAPITests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        self.access_log = io.StringIO()
        self.gateway, self.service, port = yield running_gateway(
            self, admin_config(upstream_port, database), access_log=AccessLog(self.access_log),
        )
        self.url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        self.admin = f"http://127.0.0.1:{self.service.admin.port.getHost().port}"

    @inlineCallbacks
    def get(self, path: str, **kwargs: Any) -> Any:
        response = yield treq.get(self.admin + path, persistent=False, **kwargs)
        text = yield response.text()
        for secret in (TEAM_KEY, OTHER_KEY, BACKEND_KEY, "sk-"):
            self.assertNotIn(secret, text)  # never a key on the page or its JSON
        return response, text

    @inlineCallbacks
    def post(self, path: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if headers is None else headers
        response = yield treq.post(self.admin + path, data=body, headers=headers, persistent=False)
        return response, (yield response.text())

    @inlineCallbacks
    def sessions(self) -> Any:
        _, text = yield self.get("/api/sessions")
        return json.loads(text)["sessions"]

    @inlineCallbacks
    def test_a_session_its_consumer_cost_and_ending_it(self) -> Any:
        """
        The page lists the session with its consumer, model, tokens and cost;
        ending it closes the client 1000 with the reason while a response is
        in flight, and that response's usage is still metered.
        """
        ws = yield deferToThread(open_client, self.url, additional_headers={"Authorization": f"Bearer {TEAM_KEY}"})
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        done = yield deferToThread(respond, ws)
        (session,) = yield self.sessions()
        self.assertEqual(
            (session["consumer"], session["route"], session["transport"], session["state"], session["responses"]),
            ("team-a", "route0", "websocket", "open", 1),
        )
        self.assertTrue(session["model"].startswith("gpt-realtime"), session["model"])
        self.assertGreater(session["cost_usd"], 0)
        self.assertEqual(session["tokens"]["output"], done["response"]["usage"]["output_tokens"])

        _, text = yield self.get("/api/consumers")
        consumers = json.loads(text)
        self.assertEqual([c["name"] for c in consumers["consumers"]], ["team-a", "team-b"])
        (budget,) = consumers["consumers"][0]["budgets"]
        self.assertEqual((budget["name"], budget["unit"]), ("daily-usd", "USD"))
        self.assertEqual(consumers["consumers"][1]["budgets"], [])
        (limits,) = consumers["rate_limits"]
        self.assertEqual((limits["route"], limits["buckets"][0]["kind"], limits["buckets"][0]["limit"]), ("route0", "requests", 100))
        self.assertEqual(limits["buckets"][0]["remaining"], 99)  # the response.create spent one

        _, text = yield self.get("/api/costs")
        (cost,) = json.loads(text)["costs"]
        self.assertEqual((cost["consumer"], cost["records"]), ("team-a", 1))
        self.assertAlmostEqual(cost["cost_usd"], session["cost_usd"])

        # A second response stays in flight; the operator ends the session meanwhile.
        self.fake.response_delay = 30.0
        yield deferToThread(ws.send, json.dumps({"type": "response.create"}))
        relay_session = next(iter(self.gateway.relays[0].sessions)).session
        yield wait_until(lambda: relay_session.responses_in_progress == 1)
        response, text = yield self.post(f"/api/sessions/{session['id']}/close")
        self.assertEqual((response.code, json.loads(text)["closing"]), (202, True))
        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (1000, "closed by operator"))
        yield wait_until(lambda: '"realtime.session"' in self.access_log.getvalue())
        (line,) = [json.loads(l) for l in self.access_log.getvalue().splitlines() if '"realtime.session"' in l]
        self.assertEqual((line["agw.responses"], line["agw.consumer"]), (2, "team-a"))  # the cancelled one was metered
        self.assertEqual(line["agw.session.output_tokens"], sum(r.usage["output_tokens"] for r in self.fake.ledger))
        self.assertEqual(len(self.fake.ledger), 2)
        self.assertEqual((yield self.sessions()), [])
        response, _ = yield self.post(f"/api/sessions/{session['id']}/close")
        self.assertEqual(response.code, 404)  # over

    @inlineCallbacks
    def test_the_page_and_its_files(self) -> Any:
        for path, kind in (("/", "text/html"), ("/ui/admin.js", "text/javascript"), ("/ui/admin.css", "text/css")):
            response, text = yield self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(kind))
            self.assertIn("frame-ancestors 'none'", response.headers.getRawHeaders("content-security-policy")[0])
            self.assertNotRegex(text, "https?://")  # nothing fetched from elsewhere: the page works offline
        response, _ = yield self.get("/ui/../pyproject.toml")
        self.assertEqual(response.code, 404)
        response, text = yield self.get("/budgets")
        self.assertEqual([c["name"] for c in json.loads(text)["consumers"]], ["team-a"])

    @inlineCallbacks
    def test_what_another_origin_cannot_do(self) -> Any:
        """
        Closing needs a JSON request (a cross-site form cannot send one), from
        no browser or the page's own origin; a rebound DNS name gets nothing.
        """
        path = "/api/sessions/0123456789abcdef/close"
        for headers, status in (
            ({}, 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
            ({"Content-Type": "application/json", "Origin": "null"}, 403),
            ({"Content-Type": "application/json", "Origin": self.admin}, 404),  # the page's own origin: allowed (no such session)
            ({"Content-Type": "application/json", "Host": "evil.example"}, 403),
        ):
            response, _ = yield self.post(path, headers=headers)
            self.assertEqual(response.code, status, headers)
        response, _ = yield self.post(path, b"x" * (ADMIN_MAX_BODY + 1))
        self.assertEqual(response.code, 413)
        response, _ = yield self.post(path, b"[1]")
        self.assertEqual(response.code, 400)
        response, _ = yield self.get(path)
        self.assertEqual((response.code, response.headers.getRawHeaders("allow")), (405, ["POST"]))
        preflight = yield treq.request(
            "OPTIONS", self.admin + path, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
            persistent=False,
        )
        yield preflight.content()
        self.assertEqual(preflight.code, 405)  # no preflight is granted: a page elsewhere cannot send JSON here
        self.assertFalse([name for name, _ in preflight.headers.getAllRawHeaders() if name.lower().startswith(b"access-control")])
        response, _ = yield self.get("/api/sessions", headers={"Host": "attacker.example:15000"})
        self.assertEqual(response.code, 403)
        response, _ = yield self.get("/api/sessions", headers={"Host": "localhost"})
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_an_operator_reason(self) -> Any:
        ws = yield deferToThread(open_client, self.url, additional_headers={"Authorization": f"Bearer {OTHER_KEY}"})
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        (session,) = yield self.sessions()
        self.assertEqual((session["consumer"], session["cost_usd"], session["responses"]), ("team-b", 0.0, 0))
        response, _ = yield self.post(f"/api/sessions/{session['id']}/close", json.dumps({"reason": "é" * 100}).encode())
        self.assertEqual(response.code, 202)
        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (1000, "é" * 61))  # cut to the 123 bytes a close frame holds


class AdminListenerTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_a_taken_admin_port_does_not_stop_the_gateway(self) -> Any:
        """The page is not worth a gateway that will not start: a taken adminAddr is logged, binds serve."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        _, upstream_port = yield listening_fake(self)
        data = yaml.safe_load(seed_config_text(upstream_port))
        data["config"]["adminAddr"] = f"127.0.0.1:{taken.getsockname()[1]}"
        gateway, service, port = yield running_gateway(self, yaml.safe_dump(data))
        self.assertIsNone(service.admin.port)
        self.assertTrue(service.is_ready())


class HostAndOriginTests(SynchronousTestCase):
    def test_hosts(self) -> None:
        for host, allowed in (
            (b"127.0.0.1:15000", True), (b"[::1]:15000", True), (b"localhost:15000", True), (b"LOCALHOST", True),
            (b"10.1.2.3", True), (b"admin.internal:15000", True), (b"evil.example:15000", False), (b"", False),
            (None, False), (b"127.0.0.1.evil.example", False), (b"\xff", False), (b"[nonsense", False),
        ):
            self.assertEqual(host_allowed(host, "admin.internal"), allowed, host)

    def test_origins(self) -> None:
        for origin, allowed in (
            (b"http://127.0.0.1:15000", True), (b"https://127.0.0.1:15000", True), (b"http://127.0.0.1:15001", False),
            (b"null", False), (b"http://evil.example", False), (b"file://", False),
        ):
            self.assertEqual(same_origin(origin, b"127.0.0.1:15000"), allowed, origin)


class RecentCostsTests(SynchronousTestCase):
    def test_summed_by_consumer_and_model_within_the_window(self) -> None:
        now = [1000.0]
        recent = RecentCosts(limit=3, clock=lambda: now[0])
        recent.add("a", "m", Decimal("0.5"), 10)
        now[0] = 2000.0
        recent.add("a", "m", Decimal("0.25"), 5)
        recent.add("", "m", Decimal("1"), 7)
        recent.add("a", "n", Decimal(0), 3)
        summary = recent.summary(window=900.0)
        self.assertEqual(summary["costs"], [
            {"consumer": None, "model": "m", "cost_usd": 1.0, "tokens": 7, "records": 1},
            {"consumer": "a", "model": "m", "cost_usd": 0.25, "tokens": 5, "records": 1},
            {"consumer": "a", "model": "n", "cost_usd": 0.0, "tokens": 3, "records": 1},
        ])
        self.assertEqual((summary["total_usd"], summary["since"]), (1.25, 2000.0))  # the oldest fell out of the ring


class AdminWebRTCTests(WebRTCCase):
    @inlineCallbacks
    def test_a_call_is_listed_and_an_operator_hangs_it_up(self) -> Any:
        """A supervised WebRTC call is a session on the page; ending it hangs the call up (end="operator")."""
        token, call_id, _ = yield self.browser_call()
        yield self.fake.drive_call(call_id, responses=1)
        admin = f"http://127.0.0.1:{self.service.admin.port.getHost().port}"
        yield wait_until(lambda: self.gateway.calls.get(call_id).session.responses == 1)
        response = yield treq.get(admin + "/api/sessions", persistent=False)
        text = yield response.text()
        (provider_secret,) = self.fake.client_secrets
        for secret in (token, provider_secret, VOICE_KEY):
            self.assertNotIn(secret, text)
        (session,) = json.loads(text)["sessions"]
        self.assertEqual((session["consumer"], session["transport"], session["responses"]), ("voice-app", "webrtc", 1))
        self.assertGreater(session["cost_usd"], 0)
        response = yield treq.post(
            admin + f"/api/sessions/{session['id']}/close", data=b"", headers={"Content-Type": "application/json"}, persistent=False,
        )
        self.assertEqual(response.code, 202)
        yield response.content()
        yield wait_until(lambda: self.metric("agw_realtime_calls_ended_total", end="operator") == 1)
        self.assertEqual(self.fake.hangups, [call_id])
        self.assertEqual(len(self.gateway.calls), 0)
