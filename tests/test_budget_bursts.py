"""
Budgets against what a client can do at once: bursts of out-of-band
responses, several sessions, models without a price, and requests the
provider refuses (phantoms that must not swallow a server-started response).
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
import yaml
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agw.metering import ReserveOptions
from tests.support import handshake_status, listening_fake, open_client, recv_event
from tests.test_budgets import TEAM_A, TEAM_B, TOKEN_LIMIT, BudgetGateway, auth, budget_config


def burst(url: str, key: str, count: int, tag: str) -> dict[str, str]:
    """Send C{count} out-of-band response.create events at once; each event_id's answer: response.done or an error code."""
    answers: dict[str, str] = {}
    with open_client(url, **auth(key)) as ws:
        recv_event(ws)
        for n in range(count):
            ws.send(json.dumps({
                "type": "response.create", "event_id": f"{tag}{n}", "response": {"conversation": "none", "metadata": {"n": n}},
            }))
        started: list[str] = []
        while len(answers) < count:
            event = recv_event(ws)
            if event["type"] == "error":
                answers[event["error"]["event_id"]] = event["error"]["code"]
            elif event["type"] == "response.created":
                started.append(event["response"]["id"])
            elif event["type"] == "response.done":
                answers[f"{tag}:{event['response']['id']}"] = "done"
    return answers


def billed_tokens(fake: Any) -> list[int]:
    return [entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in fake.ledger]


class BurstTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        self.fake.response_delay = 0.3  # the responses of a burst overlap at the provider
        self.database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        self.agw = yield BudgetGateway(self, self.upstream_port, self.database).start()

    @inlineCallbacks
    def test_burst_of_out_of_band_responses_bills_at_most_one_over(self) -> Any:
        """10 out-of-band responses at once against a 100-token budget: one runs, nine are refused, in-protocol."""
        first = yield deferToThread(burst, self.agw.url, TEAM_A, 10, "a")
        self.assertEqual(sorted(first.values()).count("done"), 1)
        self.assertEqual(sorted(first.values()).count("rate_limit_exceeded"), 9)
        self.assertEqual(len(self.fake.ledger), 1)
        # Bursts until the budget is spent: never more than one response past the limit.
        for round_ in range(10):
            try:
                yield deferToThread(burst, self.agw.url, TEAM_A, 5, f"r{round_}-")
            except InvalidStatus as e:
                self.assertEqual(e.response.status_code, 429)
                break  # spent: refused at the handshake from now on
        billed = billed_tokens(self.fake)
        self.assertGreaterEqual(sum(billed), TOKEN_LIMIT)
        self.assertLessEqual(sum(billed), TOKEN_LIMIT + max(billed))
        spent = yield deferToThread(self.agw.budgets)
        self.assertEqual(spent["team-a/daily-tokens"]["spent"], sum(billed))

    @inlineCallbacks
    def test_bursts_from_several_sessions_at_once(self) -> Any:
        """The hold is the consumer's, not the session's: three sessions bursting together still start one response."""
        bursts = [deferToThread(burst, self.agw.url, TEAM_A, 4, f"s{n}-") for n in range(3)]
        results = yield DeferredList(bursts, fireOnOneErrback=True)
        answers = [value for _, result in results for value in result.values()]
        self.assertEqual(answers.count("done"), 1)
        self.assertEqual(answers.count("rate_limit_exceeded"), 11)


class UnpricedModelTests(TestCase):
    """A USD budget cannot count what a model without a price costs: such a model is refused, unless priced by '*'."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        self.database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")

    @inlineCallbacks
    def start(self, config_text: str | None = None) -> Any:
        self.agw = yield BudgetGateway(self, self.upstream_port, self.database, config_text).start()

    @inlineCallbacks
    def test_unpriced_model_refused_at_the_handshake(self) -> Any:
        yield self.start()
        url = self.agw.url.replace("model=gpt-realtime", "model=gpt-realtime-mini")
        status, body = yield deferToThread(handshake_status, url, **auth(TEAM_B))
        self.assertEqual((status, json.loads(body)["error"]["code"]), (403, "model_not_priced"))
        self.assertEqual(self.fake.handshakes, [])
        # A Tokens budget counts tokens whatever the price: that key is served.
        yield deferToThread(lambda: open_client(url, **auth(TEAM_A)).close())
        self.assertEqual(len(self.fake.handshakes), 1)

    @inlineCallbacks
    def test_session_whose_provider_answers_with_an_unpriced_model(self) -> Any:
        """Asked for a priced model, served by one without a price: its responses are refused in-protocol."""
        yield self.start()
        self.fake.realtime_model = "gpt-realtime-unpriced"

        def session() -> dict[str, Any]:
            with open_client(self.agw.url, **auth(TEAM_B)) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "response.create", "event_id": "x"}))
                return recv_event(ws)

        error = yield deferToThread(session)
        self.assertEqual((error["type"], error["error"]["code"], error["error"]["event_id"]), ("error", "model_not_priced", "x"))
        self.assertFalse([m for m in self.fake.received if b"response.create" in m])

    @inlineCallbacks
    def test_unpriced_model_refused_on_http(self) -> Any:
        config = yaml.safe_load(budget_config(self.upstream_port, self.database))
        for route in config["binds"][0]["listeners"][0]["routes"]:
            for backend in route["backends"]:
                backend["ai"]["provider"]["openAI"].pop("model", None)  # the seed pins gpt-4, which is priced
        yield self.start(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{self.agw.port}/v1/chat/completions"
        response = yield treq.post(
            url, json={"model": "no-such-model", "messages": []}, headers={"Authorization": f"Bearer {TEAM_B}"}, persistent=False,
        )
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (403, "model_not_priced"))
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_fallback_price_charges_the_budget(self) -> Any:
        """An operator's '*' entry prices what the catalog does not list: served, and charged at that rate."""
        catalog = os.path.abspath(self.mktemp() + ".json")
        with open(catalog, "w") as f:
            json.dump({"providers": {"openai": {"models": {"*": {"rates": {"input": "100", "output": "100"}}}}}}, f)
        config = yaml.safe_load(budget_config(self.upstream_port, self.database))
        config["config"]["modelCatalog"] = [{"file": catalog}]
        yield self.start(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{self.agw.port}/v1/chat/completions"
        response = yield treq.post(
            url, json={"model": "no-such-model", "messages": []}, headers={"Authorization": f"Bearer {TEAM_B}"}, persistent=False,
        )
        body = yield response.json()
        self.assertEqual(response.code, 200)
        yield self.agw.gateway.governor.flush()
        spent = yield deferToThread(self.agw.budgets)
        usage = body["usage"]
        cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)  # '*' has no cacheRead rate: free
        tokens = usage["prompt_tokens"] - cached + usage["completion_tokens"]
        self.assertAlmostEqual(spent["team-b/daily-usd"]["spent"], tokens * 100 / 1_000_000, places=9)


class PhantomRequestTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_refused_request_does_not_swallow_a_server_started_response(self) -> Any:
        """
        A response.create without event_id that the provider refuses is not
        waited for: the next response the server starts on its own (over
        budget) is cancelled, not taken for its answer.
        """
        fake, upstream_port = yield listening_fake(self)
        fake.server_vad = True
        fake.response_delay = 30.0  # only a cancel ends a response in time
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        # Reserve one token per response, so the second request is admitted and reaches the provider.
        agw = yield BudgetGateway(self, upstream_port, database, reserve=ReserveOptions(tokens=1)).start()

        def session() -> list[dict[str, Any]]:
            events = []
            with open_client(agw.url, **auth(TEAM_A)) as ws:
                recv_event(ws)
                ws.send(json.dumps({"type": "response.create", "event_id": "first", "response": {"output_modalities": ["audio"]}}))
                while recv_event(ws)["type"] != "response.created":
                    pass
                ws.send(json.dumps({"type": "response.create"}))  # no event_id; the provider refuses it
                while (event := recv_event(ws))["type"] != "error":
                    pass
                events.append(event)
                ws.send(json.dumps({"type": "response.cancel"}))  # the first ends, over the budget
                while recv_event(ws)["type"] != "response.done":
                    pass
                ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # server VAD starts a response
                try:
                    while True:
                        events.append(recv_event(ws))
                except ConnectionClosed:  # over budget: the session ends (1008)
                    events.append({"type": "closed", "code": ws.close_code})
                return events

        events = yield deferToThread(session)
        self.assertEqual(events[0]["error"]["code"], "conversation_already_has_active_response")
        self.assertIn("rate_limit_exceeded", [e["error"]["code"] for e in events[1:] if e["type"] == "error"])
        self.assertEqual(events[-1], {"type": "closed", "code": 1008})
        cancels = [json.loads(m) for m in fake.received if b"response.cancel" in m]
        self.assertEqual(cancels[-1], {"type": "response.cancel", "response_id": "resp_2"})
