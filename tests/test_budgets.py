"""
Budgets that hold inside a live Realtime session: a consumer over its
budget gets its next response.create refused in-protocol while the other
key is unaffected; server-started responses are cancelled; spend is
charged as the provider bills it, survives a restart, and is shared by
gateways on one SQLite file or one PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from decimal import Decimal
from typing import Any

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed

from agw import Gateway, parse_config
from agw.config import Budget, BudgetUnit, ClientKey
from agw.metering import BudgetLedger, Governor
from agw.realtime import RelayOptions
from tests.support import (
    BACKEND_KEY,
    PostgresServer,
    catalog_price,
    handshake_status,
    listening_fake,
    open_client,
    recv_event,
    registry_samples,
    seed_config_text,
    wait_until,
)

TEAM_A = "sk-agw-team-a-budget"
TEAM_B = "sk-agw-team-b-budget"
TOKEN_LIMIT = 100  # the fake's first audio response alone uses 106


def budget_config(upstream_port: int, database_url: str) -> str:
    data = yaml.safe_load(seed_config_text(upstream_port))
    data["config"]["database"] = {"url": database_url}
    data["config"]["adminAddr"] = "127.0.0.1:0"
    keys = [
        {"key": TEAM_A, "metadata": {"name": "team-a"}, "budgets": [
            {"name": "daily-tokens", "limit": {"unit": "Tokens", "amount": TOKEN_LIMIT}, "window": {"rolling": "24h"}},
        ]},
        {"keyHash": "sha256:" + hashlib.sha256(TEAM_B.encode()).hexdigest(), "metadata": {"name": "team-b"}, "budgets": [
            {"name": "daily-usd", "limit": {"unit": "USD", "amount": "5"}, "window": {"rolling": "24h"}},
            {"name": "audit", "limit": {"unit": "Tokens", "amount": 1}, "window": {"rolling": "1h"},
             "onBudgetExceeded": "Audit"},
        ]},
    ]
    for route in data["binds"][0]["listeners"][0]["routes"]:
        route["policies"]["apiKey"] = {"mode": "strict", "keys": keys}
    return yaml.safe_dump(data)


class BudgetGateway:
    """agw with budgeted keys, running (one of several on the same database, possibly)."""

    def __init__(self, case: TestCase, upstream_port: int, database_url: str, config_text: str | None = None, **gateway: Any) -> None:
        self.case = case
        text = config_text if config_text is not None else budget_config(upstream_port, database_url)
        self.gateway = Gateway(parse_config(text, {"OPENAI_API_KEY": BACKEND_KEY}), **gateway)
        self.service = self.gateway.service(interface="127.0.0.1", drain_period=0)

    @inlineCallbacks
    def start(self) -> Any:
        self.service.startService()
        self.case.addCleanup(self.stop)
        yield wait_until(self.service.is_ready)
        self.port = self.service.port_of(0)
        self.admin_port = self.service.admin.port.getHost().port
        return self

    def stop(self) -> Any:
        return self.service.stopService() if self.service.running else None

    def budgets(self) -> dict[str, dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/budgets", timeout=5) as response:
            data = json.loads(response.read())
        return {f"{c['name']}/{b['name']}": b for c in data["consumers"] for b in c["budgets"]}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"


def auth(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


def respond(ws: Any, event_id: str) -> dict[str, Any]:
    """Send a response.create; the response.done, or the error event that answered it."""
    ws.send(json.dumps({"type": "response.create", "event_id": event_id, "response": {"output_modalities": ["audio"]}}))
    while True:
        event = recv_event(ws)
        if event["type"] in ("response.done", "error"):
            return event


class BudgetInSessionTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        self.database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        self.agw = yield BudgetGateway(self, self.upstream_port, self.database).start()

    @inlineCallbacks
    def test_over_budget_response_create_is_refused_in_protocol(self) -> Any:
        def team_a() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            with open_client(self.agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                first = respond(ws, "first")  # within the budget when asked: runs to the end
                second = respond(ws, "second")  # the first used more than the budget: refused
                ws.send(json.dumps({"type": "test.echo", "still": "open"}))
                echo = recv_event(ws)
                return first, second, echo

        first, second, echo = yield deferToThread(team_a)
        self.assertEqual(first["type"], "response.done")
        self.assertEqual(second["type"], "error")
        self.assertEqual((second["error"]["code"], second["error"]["event_id"]), ("rate_limit_exceeded", "second"))
        self.assertEqual(echo, {"type": "test.echo", "still": "open"})  # the session goes on
        self.assertEqual(len(self.fake.ledger), 1)  # the refused one never reached the provider

        def team_b() -> dict[str, Any]:
            with open_client(self.agw.url, **auth(TEAM_B)) as ws:
                recv_event(ws)
                return respond(ws, "b1")

        other = yield deferToThread(team_b)
        self.assertEqual(other["type"], "response.done")  # the other key is unaffected

        usage = self.fake.ledger[0].usage
        spent = yield deferToThread(self.agw.budgets)
        self.assertEqual(spent["team-a/daily-tokens"]["spent"], usage["input_tokens"] + usage["output_tokens"])
        self.assertEqual(spent["team-a/daily-tokens"]["remaining"], 0)
        b_cost = Decimal(str(spent["team-b/daily-usd"]["spent"]))
        self.assertEqual(round(b_cost, 9), round(catalog_price(self.fake.ledger[1].usage), 9))
        self.assertGreater(spent["team-b/audit"]["spent"], 1)  # Audit: over, and never blocked
        gauge = registry_samples(self.agw.gateway.metrics.registry)
        labels = frozenset({"consumer": "team-a", "budget": "daily-tokens", "unit": "Tokens"}.items())
        self.assertEqual(gauge[("agw_budget_remaining", labels)], 0)
        self.assertEqual(gauge[("agw_budget_limit", labels)], TOKEN_LIMIT)

        # Over budget at the handshake: refused before the provider is asked.
        handshakes = len(self.fake.handshakes)
        status, body = yield deferToThread(handshake_status, self.agw.url, **auth(TEAM_A))
        self.assertEqual((status, json.loads(body)["error"]["code"]), (429, "rate_limit_exceeded"))
        self.assertEqual(len(self.fake.handshakes), handshakes)
        refusals = {
            dict(labels)["status"]: value for (name, labels), value in registry_samples(self.agw.gateway.metrics.registry).items()
            if name == "agw_realtime_refusals_total"
        }
        self.assertEqual(refusals, {"response.create": 1.0, "429": 1.0})

        # HTTP too: 429 with the rate-limit headers.
        response = yield treq.post(
            f"http://127.0.0.1:{self.agw.port}/v1/chat/completions", json={"model": "m", "messages": []},
            headers={"Authorization": f"Bearer {TEAM_A}"}, persistent=False,
        )
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (429, "rate_limit_exceeded"))
        self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-remaining"), [b"0"])
        self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-limit"), [str(TOKEN_LIMIT).encode()])

    @inlineCallbacks
    def test_budgets_in_rate_limits_updated(self) -> Any:
        """Clients read their remaining budget where they read the provider's limits."""

        def session() -> list[dict[str, Any]]:
            updates = []
            with open_client(self.agw.url, **auth(TEAM_B)) as ws:
                recv_event(ws)
                for n in range(2):
                    ws.send(json.dumps({"type": "response.create"}))
                    while (event := recv_event(ws))["type"] != "response.done":
                        if event["type"] == "rate_limits.updated":
                            updates.append(event)
            return updates

        first, second = yield deferToThread(session)
        self.assertEqual(
            [limit["name"] for limit in first["rate_limits"]], ["requests", "tokens", "agw.budget.daily-usd", "agw.budget.audit"],
        )
        usd = {limit["name"]: limit for limit in first["rate_limits"]}["agw.budget.daily-usd"]
        self.assertEqual((usd["limit"], usd["remaining"]), (5.0, 5.0))
        self.assertTrue(0 < usd["reset_seconds"] <= 86400)
        after = {limit["name"]: limit for limit in second["rate_limits"]}
        spent = float(catalog_price(self.fake.ledger[0].usage))
        self.assertAlmostEqual(after["agw.budget.daily-usd"]["remaining"], 5.0 - spent, places=9)

    @inlineCallbacks
    def test_server_started_response_over_budget_is_cancelled_and_still_charged(self) -> Any:
        """
        Server VAD over an exhausted budget: the response is cancelled by its
        id, the client told why, and the session ends (1008): every turn would
        start another, and each is billed. What it used is still charged.
        """
        self.fake.server_vad = True
        self.fake.response_delay = 30.0  # only the cancel ends it in time

        def session() -> tuple[list[str], tuple[int | None, str | None]]:
            with open_client(self.agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                # An audio response uses more than the whole budget.
                ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["audio"]}}))
                types: list[str] = []
                while True:  # server VAD starts a second response after the commit below
                    try:
                        event = recv_event(ws)
                    except ConnectionClosed:
                        return types, (ws.close_code, ws.close_reason)
                    types.append(event["type"])
                    if event["type"] == "response.created" and types.count("response.created") == 1:
                        ws.send(json.dumps({"type": "response.cancel"}))  # end the first one now
                    if event["type"] == "response.done" and types.count("response.done") == 1:
                        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        types, (code, reason) = yield deferToThread(session)
        self.assertIn("error", types[types.index("response.done") + 1:])
        self.assertEqual(code, 1008)
        self.assertIn("rate_limit_exceeded", reason)
        cancels = [json.loads(m) for m in self.fake.received if b"response.cancel" in m]
        self.assertEqual(cancels[-1], {"type": "response.cancel", "response_id": "resp_2"})
        yield wait_until(lambda: len(self.fake.ledger) == 2)  # the cancelled one reported its usage to agw's drain
        billed = sum(e.usage["input_tokens"] + e.usage["output_tokens"] for e in self.fake.ledger)
        yield wait_until(lambda: self.agw.gateway.governor.states("team-a")[0].spent == billed)
        yield self.agw.gateway.governor.flush()
        spent = yield deferToThread(self.agw.budgets)
        self.assertEqual(spent["team-a/daily-tokens"]["spent"], billed)

    @inlineCallbacks
    def test_server_vad_session_ends_when_its_budget_is_spent(self) -> Any:
        """
        A response the server started spends the rest of the budget: the
        session ends (1008) after its response.done, without waiting for the
        user's next turn to start (and bill) another one.
        """
        self.fake.server_vad = True

        def session() -> tuple[list[str], int | None]:
            types: list[str] = []
            with open_client(self.agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the server starts a 106-token response
                try:
                    while True:
                        types.append(recv_event(ws)["type"])
                except ConnectionClosed:
                    return types, ws.close_code

        types, code = yield deferToThread(session)
        self.assertEqual(types[-2:], ["response.done", "error"])
        self.assertEqual(code, 1008)
        self.assertEqual(len(self.fake.ledger), 1)  # no second response was started

    @inlineCallbacks
    def test_spend_survives_a_restart(self) -> Any:
        def spend() -> None:
            with open_client(self.agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                respond(ws, "x")

        yield deferToThread(spend)
        spent = yield deferToThread(self.agw.budgets)
        self.assertEqual(spent["team-a/daily-tokens"]["remaining"], 0)
        yield self.agw.stop()  # the charge is in the database before the service stops
        again = yield BudgetGateway(self, self.upstream_port, self.database).start()
        yield wait_until(lambda: again.gateway.governor.blocking("team-a") is not None)
        after = yield deferToThread(again.budgets)
        self.assertEqual(after["team-a/daily-tokens"]["spent"], spent["team-a/daily-tokens"]["spent"])
        status, _ = yield deferToThread(handshake_status, again.url, **auth(TEAM_A))
        self.assertEqual(status, 429)


class RepeatedTypeTests(TestCase):
    """
    An event that names its type twice is governed as a response.create if
    either type is one: JSON decoders differ on which repeated key counts.
    """

    timeout = 60
    relay_options = RelayOptions()
    # Each event names response.create and another type; the fake, like json.loads, acts on the last one.
    EVENTS = (
        # Its head says conversation.item.create: the pass-through must not let it by on that alone.
        b'{"type":"conversation.item.create","event_id":"twice-1","type":"response.create"}',
        # The mirror on the message path: json.loads sees conversation.item.create only.
        b'{"event_id":"twice-2","type":"response.create","type":"conversation.item.create"}',
    )

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        self.agw = yield BudgetGateway(self, upstream_port, database, relay_options=self.relay_options).start()

    @inlineCallbacks
    def test_over_budget_either_type_is_refused_in_protocol(self) -> Any:
        def session() -> list[dict[str, Any]]:
            with open_client(self.agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                respond(ws, "first")  # uses more than the budget
                for event in self.EVENTS:
                    ws.send(event.decode())
                ws.send(json.dumps({"type": "test.echo"}))  # the fake answers in order: everything before it is in
                events = []
                while (event := recv_event(ws))["type"] != "test.echo":
                    events.append(event)
                return events

        events = yield deferToThread(session)
        errors = [(e["error"]["code"], e["error"]["event_id"]) for e in events if e["type"] == "error"]
        # Needs the wiring in RealtimeServerProtocol.onMessage (governance by client_event_types).
        self.assertEqual(errors, [("rate_limit_exceeded", "twice-1"), ("rate_limit_exceeded", "twice-2")])
        self.assertNotIn("response.created", [e["type"] for e in events])
        self.assertEqual([m for m in self.fake.received if b"twice" in m], [])  # neither reached the provider
        self.assertEqual(len(self.fake.ledger), 1)



class MessageRelayRepeatedTypeTests(RepeatedTypeTests):
    """The same on the whole-message path (C{--message-relay})."""

    relay_options = RelayOptions(pass_through=False)


class SharedLedgerTests(TestCase):
    """Two gateways charging one database at once: every charge counts, once."""

    timeout = 60

    @inlineCallbacks
    def charge_concurrently(self, url: str) -> Any:
        key = ClientKey(digest="x", metadata={"name": "team"}, budgets=(
            Budget("tokens", BudgetUnit.TOKENS, Decimal(10**9), 86400),
        ))
        governors = [Governor([key], BudgetLedger(url, reactor), reactor) for _ in range(2)]
        for governor in governors:
            yield governor.start()
            self.addCleanup(governor.stop)
        for _ in range(50):
            for governor in governors:
                governor.charge("team", None, 7)
        expected = 2 * 50 * 7
        deadline = reactor.seconds() + 20
        while reactor.seconds() < deadline:
            # Each governor learns the others' charges from the database.
            yield DeferredList([governor.refresh() for governor in governors])
            if all(g.states("team")[0].spent == expected for g in governors):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([g.states("team")[0].spent for g in governors], [expected, expected])

    def test_sqlite_file(self) -> Any:
        return self.charge_concurrently("sqlite://" + os.path.abspath(self.mktemp() + ".db"))

    def test_postgresql(self) -> Any:
        server = PostgresServer(self)
        return self.charge_concurrently(server.url)

    @inlineCallbacks
    def test_two_gateways_on_one_postgresql(self) -> Any:
        """A consumer that spent its budget through one gateway is refused by the other."""
        server = PostgresServer(self)
        fake, upstream_port = yield listening_fake(self)
        first = yield BudgetGateway(self, upstream_port, server.url).start()
        second = yield BudgetGateway(self, upstream_port, server.url).start()

        def spend() -> None:
            with open_client(first.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                respond(ws, "x")

        yield deferToThread(spend)
        yield wait_until(lambda: second.gateway.governor.blocking("team-a") is not None, timeout=10)
        status, _ = yield deferToThread(handshake_status, second.url, **auth(TEAM_A))
        self.assertEqual(status, 429)
        both = yield DeferredList([deferToThread(first.budgets), deferToThread(second.budgets)])
        usage = fake.ledger[0].usage
        self.assertEqual(
            [result["team-a/daily-tokens"]["spent"] for _, result in both],
            [usage["input_tokens"] + usage["output_tokens"]] * 2,
        )


class DocumentedExampleTests(TestCase):
    def test_governance_example_config_parses(self) -> None:
        """docs/governance.md's example is a config agw accepts."""
        import re

        from tests.support import REPO

        with open(os.path.join(REPO, "docs", "governance.md")) as f:
            example = re.search(r"```yaml\n(.*?)```", f.read(), re.S).group(1)
        config = parse_config(example, {"OPENAI_API_KEY": "sk-x", "VOICE_APP_KEY": "sk-voice"})
        keys = config.binds[0].listeners[0].routes[0].policies.api_key.keys
        self.assertEqual([key.name for key in keys], ["voice-app", "research"])
        self.assertEqual(keys[0].budgets[0].window_seconds, 86400)
        self.assertEqual(config.database_url.value, "sqlite:///var/lib/agw/budgets.db")
