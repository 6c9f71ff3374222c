"""
A client key with allowedModels or budgets does not reach a path agw
forwards unread (passthrough): there its model could not be checked nor
its tokens counted. The operator may let one through (allowPassthrough).
Listing models (the models route type, GET) spends nothing and stays open.
"""

from __future__ import annotations

import os
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import BACKEND_KEY, listening_fake, on_twisted_web, running_gateway, seed_config_text

MODELS_ONLY = "sk-agw-models-only-0123"
BUDGETED = "sk-agw-budgeted-4567"
OPEN = "sk-agw-open-8901"
TRUSTED = "sk-agw-trusted-2345"
BUDGET = {"name": "daily", "limit": {"unit": "Tokens", "amount": 1000}, "window": {"rolling": "24h"}}


class PassthroughKeysTests(TestCase):
    """The seed config (chat completions parsed, everything else passthrough) with client keys."""

    trusted_key: dict[str, Any] | None = None

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        data = yaml.safe_load(seed_config_text(upstream_port, {"/v1/models": "models"}))
        data["config"]["database"] = {"url": "sqlite://" + os.path.abspath(self.mktemp() + ".db")}
        data["config"]["adminAddr"] = "127.0.0.1:0"
        keys = [
            {"key": MODELS_ONLY, "allowedModels": ["gpt-4"]},
            {"key": BUDGETED, "metadata": {"name": "budgeted"}, "budgets": [BUDGET]},
            {"key": OPEN, "metadata": {"name": "open"}},
        ]
        if self.trusted_key is not None:
            keys.append(self.trusted_key)
        for route in data["binds"][0]["listeners"][0]["routes"]:
            route["policies"]["apiKey"] = {"mode": "strict", "keys": keys}
            route["backends"][0]["ai"]["provider"]["openAI"].pop("model", None)  # the client's model is checked
        _, _, self.port = yield running_gateway(self, yaml.safe_dump(data))

    @inlineCallbacks
    def call(self, key: str, method: str = "POST", path: str = "responses") -> Any:
        response = yield treq.request(
            method, f"http://127.0.0.1:{self.port}/v1/{path}", headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-4o", "input": "hi"} if method == "POST" else None, persistent=False,
        )
        return response.code, (yield response.json())

    @inlineCallbacks
    def test_restricted_keys_refused_on_passthrough_before_upstream(self) -> Any:
        for key in (MODELS_ONLY, BUDGETED):
            code, body = yield self.call(key)
            self.assertEqual(
                (code, body["error"]["code"], body["error"]["type"]), (403, "passthrough_not_allowed", "invalid_request_error"),
            )
            self.assertIn("forwarded unread (passthrough)", body["error"]["message"])
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_unrestricted_key_forwarded(self) -> Any:
        code, body = yield self.call(OPEN)
        self.assertEqual((code, body["object"]), (200, "response"))
        seen = self.fake.http_requests[0]
        self.assertEqual((seen.uri, seen.headers["authorization"]), ("/v1/responses", f"Bearer {BACKEND_KEY}"))

    @inlineCallbacks
    def test_listing_models_is_open_to_every_key(self) -> Any:
        for key in (MODELS_ONLY, BUDGETED, OPEN):
            code, body = yield self.call(key, "GET", "models")
            self.assertEqual((code, body["uri"]), (200, "/v1/models"))
        code, body = yield self.call(MODELS_ONLY, "DELETE", "models/ft:gpt-4o:team")  # not a listing
        self.assertEqual((code, body["error"]["code"]), (403, "passthrough_not_allowed"))
        self.assertEqual(len(self.fake.http_requests), 3)

    @inlineCallbacks
    def test_parsed_routes_unchanged(self) -> Any:
        code, body = yield self.call(MODELS_ONLY, path="chat/completions")  # gpt-4o: read and refused
        self.assertEqual((code, body["error"]["code"]), (403, "model_not_allowed"))
        response = yield treq.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", json={"model": "gpt-4", "messages": []},
            headers={"Authorization": f"Bearer {BUDGETED}"}, persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()


class AllowPassthroughTests(PassthroughKeysTests):
    trusted_key = {"key": TRUSTED, "allowedModels": ["gpt-4"], "allowPassthrough": True}

    @inlineCallbacks
    def test_operator_lets_a_restricted_key_through(self) -> Any:
        code, body = yield self.call(TRUSTED)
        self.assertEqual((code, body["object"]), (200, "response"))
        code, _ = yield self.call(TRUSTED, path="chat/completions")  # allowedModels still holds where agw reads
        self.assertEqual(code, 403)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebPassthroughKeysTests = on_twisted_web(PassthroughKeysTests)
