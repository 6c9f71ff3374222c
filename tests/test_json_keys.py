"""
A request body with a key twice is refused: agw reads one of the two (the
last), the provider may read the other, and a check on one (allowedModels)
would not hold for the other.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks

from tests.support import on_twisted_web
from tests.test_apikey import TEAM_A, APIKeyGatewayTests


class DuplicateKeyTests(APIKeyGatewayTests):
    client_model = True  # the client's model goes upstream as it wrote it

    @inlineCallbacks
    def post(self, path: str, raw: bytes) -> Any:
        response = yield treq.post(
            f"http://127.0.0.1:{self.port}/v1/{path}", data=raw,
            headers={"Authorization": f"Bearer {TEAM_A}", "Content-Type": "application/json"}, persistent=False,
        )
        return response.code, (yield response.json())

    @inlineCallbacks
    def test_duplicate_model_cannot_sidestep_allowed_models(self) -> Any:
        # agw would read gpt-4 (allowed); a provider reading the first would serve gpt-4o.
        code, body = yield self.post("chat/completions", b'{"model": "gpt-4o", "messages": [], "model": "gpt-4"}')
        self.assertEqual((code, body["error"]["code"], body["error"]["type"]), (400, "duplicate_json_key", "invalid_request_error"))
        self.assertIn("duplicate key 'model'", body["error"]["message"])
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_duplicate_at_any_depth_and_escaped(self) -> Any:
        for raw in (
            b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi", "role": "system"}]}',
            b'{"model": "gpt-4", "messages": [], "mod\\u0065l": "gpt-4o"}',
        ):
            code, body = yield self.post("chat/completions", raw)
            self.assertEqual((code, body["error"]["code"]), (400, "duplicate_json_key"), raw)
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_normal_body_still_works(self) -> Any:
        code, body = yield self.post("chat/completions", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}')
        self.assertEqual((code, body["choices"][0]["message"]["content"]), (200, "Hello!"))
        self.assertEqual(len(self.fake.http_requests), 1)

    @inlineCallbacks
    def test_deeply_nested_body_is_a_400_not_a_gateway_error(self) -> Any:
        """JSON nested deeper than the decoder goes is the client's error: 400, nothing upstream, no traceback."""
        raw = b'{"model": "gpt-4", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        code, body = yield self.post("chat/completions", raw)
        self.assertEqual((code, body["error"]["code"]), (400, "invalid_json"))
        self.assertEqual(self.fake.http_requests, [])


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebDuplicateKeyTests = on_twisted_web(DuplicateKeyTests)
