"""
Helpers for the WebRTC tests: agw with client keys (and budgets) on the
seed's Realtime route, a browser-style client (client secret, SDP offer,
hang-up) over loopback, and readers of what agw recorded.
"""

from __future__ import annotations

import io
import json
import os
from decimal import Decimal
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from agw.calls import call_form
from agw.metering import AccessLog
from tests.support import catalog_price, listening_fake, registry_samples, running_gateway, seed_config_text, wait_until

VOICE_KEY = "sk-agw-voice-app-0123456789"
OTHER_KEY = "sk-agw-other-team-9876543210"
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
MODEL = "gpt-realtime"


def webrtc_config(upstream_port: int, database_url: str | None = None, voice_budget: dict | None = None, calls: dict | None = None) -> str:
    """The seed config: its Realtime route with two client keys (the voice app's may have a budget) and realtimeCalls."""
    data = yaml.safe_load(seed_config_text(upstream_port))
    data["config"]["adminAddr"] = "127.0.0.1:0"
    if database_url is not None:
        data["config"]["database"] = {"url": database_url}
    voice: dict[str, Any] = {"key": VOICE_KEY, "metadata": {"name": "voice-app"}, "allowedModels": ["gpt-realtime*"]}
    if voice_budget is not None:
        voice["budgets"] = [voice_budget]
    route = data["binds"][0]["listeners"][0]["routes"][0]
    route["policies"]["apiKey"] = {"mode": "strict", "keys": [voice, {"key": OTHER_KEY, "metadata": {"name": "other"}}]}
    route["policies"]["realtimeCalls"] = calls or {"sideband": {"reconnectDelay": "10ms", "maxReconnectDelay": "40ms"}}
    return yaml.safe_dump(data)


class WebRTCCase(TestCase):
    """A fake provider and agw (the seed's Realtime route with client keys); C{voice_budget}, C{calls}: see L{webrtc_config}."""

    timeout = 60
    voice_budget: dict | None = None
    calls: dict | None = None

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db") if self.voice_budget is not None else None
        config = webrtc_config(self.upstream_port, database, self.voice_budget, self.calls)
        self.access = io.StringIO()
        self.gateway, self.service, self.port = yield running_gateway(self, config, access_log=AccessLog(self.access))
        self.base = f"http://127.0.0.1:{self.port}/v1/realtime"
        self.seen: list[tuple[Any, bytes]] = []  # every answer agw gave: (headers, body)

    @inlineCallbacks
    def post(self, path: str, body: bytes, content_type: str, bearer: str | None) -> Any:
        """POST to agw's Realtime route; fires with (status, headers, body)."""
        headers = {"Content-Type": content_type}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        response = yield treq.post(f"{self.base}{path}", data=body, headers=headers, persistent=False)
        content = yield response.content()
        self.seen.append((response.headers, content))
        return response.code, response.headers, content

    @inlineCallbacks
    def client_secret(self, key: str = VOICE_KEY, model: str = MODEL, **request: Any) -> Any:
        """A client secret from agw: fires with (status, JSON body)."""
        body = {"session": {"type": "realtime", "model": model, "instructions": "Be brief."}, **request}
        status, _, content = yield self.post("/client_secrets", json.dumps(body).encode(), "application/json", key)
        return status, json.loads(content) if content else None

    @inlineCallbacks
    def open_call(self, token: str, offer: str = OFFER) -> Any:
        """A browser's call through agw (raw SDP with agw's token): fires with (status, headers, body)."""
        return (yield self.post("/calls", offer.encode(), "application/sdp", token))

    @inlineCallbacks
    def browser_call(self, key: str = VOICE_KEY) -> Any:
        """Mint, then call: fires with (token, call id, agw's Location)."""
        status, secret = yield self.client_secret(key)
        self.assertEqual(status, 200, secret)
        status, headers, body = yield self.open_call(secret["value"])
        self.assertEqual(status, 201, body)
        location = headers.getRawHeaders(b"location")[0].decode()
        return secret["value"], location.rsplit("/", 1)[-1], location

    @inlineCallbacks
    def multipart_call(self, key: str, session: dict[str, Any]) -> Any:
        body, content_type = call_form(OFFER, session)
        return (yield self.post("/calls", body, content_type, key))

    def samples(self) -> dict:
        return registry_samples(self.gateway.metrics.registry)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of C{name}'s samples whose labels include C{labels}."""
        return sum(
            value for (sample, found), value in self.samples().items()
            if sample == name and set(labels.items()) <= set(dict(found).items())
        )

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log so far, one record per line."""
        return [json.loads(line) for line in self.access.getvalue().splitlines() if line]

    def exposed(self, secret: str) -> list[str]:
        """Where agw showed C{secret} to a client (headers or bodies), if anywhere."""
        found = []
        for headers, body in self.seen:
            if secret.encode() in body:
                found.append(f"body {body[:80]!r}")
            for name, values in headers.getAllRawHeaders():
                if any(secret.encode() in value for value in values):
                    found.append(f"header {name!r}")
        return found


@inlineCallbacks
def drive_metered(case: Any, call_id: str, consumer: str, responses: int = 2) -> Any:
    """
    Have the fake's caller speak C{responses} times on C{call_id} (agw relays
    nothing), then check the consumer's tokens and cost on /metrics are the
    fake's bill, priced from the catalog.
    """
    statuses = yield case.fake.drive_call(call_id, responses=responses)
    case.assertEqual(statuses, ["completed"] * responses)
    yield wait_until(lambda: case.metric("agw_gen_ai_tokens_total", consumer=consumer) == sum(
        e.usage["input_tokens"] + e.usage["output_tokens"] + e.usage["input_token_details"]["cached_tokens"]
        for e in case.fake.ledger
    ))
    cost = case.metric("agw_gen_ai_cost_usd_total", consumer=consumer)
    case.assertEqual(round(Decimal(str(cost)), 9), round(ledger_cost(case.fake.ledger), 9))


def ledger_cost(ledger: list) -> Decimal:
    """What the fake billed for responses, at agw's default catalog's gpt-realtime prices."""
    return sum((catalog_price(entry.usage) for entry in ledger if entry.operation == "chat"), Decimal(0))


def ledger_tokens(ledger: list) -> int:
    return sum(entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in ledger)


def backend_key_used(fake: Any, path: str) -> list[str]:
    """The Authorization headers of the fake's HTTP requests to C{path}."""
    return [request.headers.get("authorization", "") for request in fake.http_requests if request.uri.split("?")[0] == path]

