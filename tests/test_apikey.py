"""
Client keys (agentgateway's apiKey policy): who may call, with which model,
refused before anything goes upstream; every token attributed to its
consumer; the client's key never forwarded or shown.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import parse_config
from agw.config import APIKeyMode, ConfigError
from agw.decisions import KeyCheck, KeyRefused, model_matches, presented_key
from agw.metering import AccessLog
from tests.support import (
    BACKEND_KEY,
    handshake_status,
    listening_fake,
    on_twisted_web,
    open_client,
    recv_event,
    registry_samples,
    running_gateway,
    seed_config_text,
)

TEAM_A = "sk-agw-team-a-0123456789"
TEAM_B = "sk-agw-team-b-9876543210"


def api_key_policy(mode: str = "strict") -> dict[str, Any]:
    return {
        "mode": mode,
        "keys": [
            {"key": "$TEAM_A_KEY", "metadata": {"name": "team-a", "cost_center": 42},
             "allowedModels": ["gpt-realtime*", "gpt-4"]},
            {"keyHash": "sha256:" + hashlib.sha256(TEAM_B.encode()).hexdigest(), "metadata": {"name": "team-b"}},
        ],
    }


def config_with_keys(
    upstream_port: int, mode: str = "strict", backend_auth: bool = True, client_model: bool = False, fields: bool = False,
) -> str:
    data = yaml.safe_load(seed_config_text(upstream_port))
    if fields:  # agentgateway's way of adding a key's metadata to metrics and logs
        data["config"]["metrics"] = {"fields": {"add": {"cost_center": "apiKey.cost_center"}}}
        data["config"]["logging"] = {"fields": {"add": {"team.cost_center": "apiKey.cost_center"}}}
    for route in data["binds"][0]["listeners"][0]["routes"]:
        route["policies"]["apiKey"] = api_key_policy(mode)
        if not backend_auth:
            del route["policies"]["backendAuth"]
        if client_model:  # the client's model goes upstream (the seed replaces it with gpt-4)
            route["backends"][0]["ai"]["provider"]["openAI"].pop("model", None)
    return yaml.safe_dump(data)


ENV = {"OPENAI_API_KEY": BACKEND_KEY, "TEAM_A_KEY": TEAM_A}
DAILY_USD = {"name": "daily", "limit": {"unit": "USD", "amount": 10}, "window": {"rolling": "24h"}}


class APIKeyConfigTests(SynchronousTestCase):
    def policy(self, spec: dict[str, Any]) -> Any:
        text = yaml.safe_dump({"binds": [{"port": 3000, "listeners": [{"routes": [{
            "backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}}}], "policies": {"apiKey": spec},
        }]}]}]})
        return parse_config(text, ENV).binds[0].listeners[0].routes[0].policies.api_key

    def error(self, spec: dict[str, Any]) -> str:
        with self.assertRaises(ConfigError) as e:
            self.policy(spec)
        return str(e.exception)

    def test_keys_are_kept_as_digests_only(self) -> None:
        policy = self.policy(api_key_policy())
        self.assertEqual(policy.mode, APIKeyMode.STRICT)
        self.assertEqual([key.name for key in policy.keys], ["team-a", "team-b"])
        self.assertEqual(policy.keys[0].digest, hashlib.sha256(TEAM_A.encode()).hexdigest())
        self.assertEqual(policy.keys[0].allowed_models, ("gpt-realtime*", "gpt-4"))
        self.assertEqual(policy.keys[0].metadata["cost_center"], 42)
        self.assertFalse(policy.keys[0].allow_passthrough)  # agw's own field, off unless the operator says so
        for text in (repr(policy), str(policy)):
            self.assertNotIn(TEAM_A, text)
            self.assertNotIn(policy.keys[0].digest, text)

    def test_default_mode_is_optional(self) -> None:
        self.assertEqual(self.policy({"keys": [{"key": "k"}]}).mode, APIKeyMode.OPTIONAL)

    def test_errors(self) -> None:
        cases = {
            "expected exactly one of key, keyHash": {"keys": [{"key": "a", "keyHash": "sha256:" + "0" * 64}]},
            "keyHash must use the sha256:<hex> format": {"keys": [{"keyHash": "md5:abc"}]},
            "sha256 keyHash must decode to 32 bytes": {"keys": [{"keyHash": "sha256:abcd"}]},
            "bcrypt keyHash is supported by agentgateway but not by agw yet": {"keys": [{"keyHash": "$$2b$$12$$abc"}]},  # $$ is a literal $
            "the same key as keys[0]": {"keys": [{"key": "a"}, {"keyHash": "sha256:" + hashlib.sha256(b"a").hexdigest()}]},
            "a model pattern may have one '*' at most": {"keys": [{"key": "a", "allowedModels": ["gpt-*-*"]}]},
            "expected strict, optional or permissive": {"mode": "lenient", "keys": [{"key": "a"}]},
            "API keys with budgets must have a metadata.name": {"keys": [{"key": "a", "budgets": [DAILY_USD]}]},
            "apiKey: API key budgets require config.database to be configured":
                {"keys": [{"key": "a", "metadata": {"name": "a"}, "budgets": [DAILY_USD]}]},
            "budgets[0].window.rolling: expected a duration":
                {"keys": [{"key": "a", "metadata": {"name": "a"}, "budgets": [{**DAILY_USD, "window": {"rolling": "soon"}}]}]},
            "budgets[0].limit.unit: expected USD or Tokens":
                {"keys": [{"key": "a", "metadata": {"name": "a"}, "budgets": [{**DAILY_USD, "limit": {"unit": "EUR", "amount": 1}}]}]},
            "apiKey.location.cookie: supported by agentgateway but not by agw yet": {"keys": [{"key": "a"}], "location": {"cookie": {"name": "k"}}},
            "keys[0].allowPassthrough: expected true or false, got a string": {"keys": [{"key": "a", "allowPassthrough": "yes"}]},
        }
        for expected, spec in cases.items():
            with self.subTest(expected=expected):
                message = self.error(spec)
                self.assertIn(expected, message)
                self.assertNotIn("\n", message)



HOURLY_TOKENS = {"name": "hourly", "limit": {"unit": "Tokens", "amount": 1000}, "window": {"rolling": "1h"}}


class SharedConsumerConfigTests(SynchronousTestCase):
    """Keys of one C{metadata.name} share its budgets, wherever they are listed."""

    def config(self, *routes_keys: list[dict[str, Any]], second_bind: list[dict[str, Any]] | None = None) -> Any:
        def routes(keys_per_route: tuple[list[dict[str, Any]], ...]) -> list[dict[str, Any]]:
            return [{"backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}}}],
                     "policies": {"apiKey": {"keys": keys}}} for keys in keys_per_route]

        binds = [{"port": 3000, "listeners": [{"routes": routes(routes_keys)}]}]
        if second_bind is not None:
            binds.append({"port": 3001, "listeners": [{"routes": []}, {"routes": routes((second_bind,))}]})
        text = yaml.safe_dump({"config": {"database": {"url": "sqlite:///tmp/agw-budgets.db"}}, "binds": binds})
        return parse_config(text, ENV, source="c.yaml")

    def test_same_name_different_budgets_refused(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.config(
                [{"key": "old", "metadata": {"name": "voice"}, "budgets": [DAILY_USD]}],
                [{"key": "other", "metadata": {"name": "other"}},
                 {"key": "new", "metadata": {"name": "voice"}, "budgets": [DAILY_USD, HOURLY_TOKENS]}],
            )
        message = str(e.exception)
        self.assertTrue(message.startswith("binds[0].listeners[0].routes[1].policies.apiKey.keys[1]: "), message)
        self.assertIn("binds[0].listeners[0].routes[0].policies.apiKey.keys[0]", message)
        self.assertIn("'voice'", message)
        self.assertIn("(c.yaml, line ", message)

    def test_across_binds_and_without_budgets(self) -> None:
        # A key with no budgets under a name that has some would spend that name's budgets unchecked.
        with self.assertRaises(ConfigError) as e:
            self.config(
                [{"key": "old", "metadata": {"name": "voice"}, "budgets": [DAILY_USD]}],
                second_bind=[{"key": "new", "metadata": {"name": "voice"}}],
            )
        message = str(e.exception)
        self.assertTrue(message.startswith("binds[1].listeners[1].routes[0].policies.apiKey.keys[0]: "), message)
        self.assertIn("binds[0].listeners[0].routes[0].policies.apiKey.keys[0]", message)

    def test_key_rotation_and_one_key_on_several_routes_allowed(self) -> None:
        rotated = [{"key": "old", "metadata": {"name": "voice"}, "budgets": [DAILY_USD, HOURLY_TOKENS]},
                   {"key": "new", "metadata": {"name": "voice"}, "budgets": [HOURLY_TOKENS, DAILY_USD]}]
        config = self.config(rotated, rotated[:1], second_bind=rotated[1:])
        keys = [key for bind in config.binds for listener in bind.listeners for route in listener.routes
                for key in route.policies.api_key.keys]
        self.assertEqual([key.name for key in keys], ["voice"] * 4)
        # Keys without a name, or unbudgeted names, are not consumers with budgets to share.
        self.config([{"key": "a"}, {"key": "b"}], [{"key": "c", "metadata": {"name": "x"}}, {"key": "d", "metadata": {"name": "x"}}])


class KeyCheckTests(SynchronousTestCase):
    def test_presented_key(self) -> None:
        def authorization(value: str | None) -> Any:
            return {"authorization": value}.get

        self.assertEqual(presented_key(None, authorization("Bearer  abc ")), "abc")
        self.assertEqual(presented_key(None, authorization("bearer abc")), "abc")
        self.assertIsNone(presented_key(None, authorization("Basic abc")))
        self.assertIsNone(presented_key(None, authorization("Bearer ")))
        self.assertEqual(presented_key(None, authorization(None), "", ("realtime", "openai-insecure-api-key.k1")), "k1")
        self.assertIsNone(presented_key(None, authorization(None), "", ("openai-insecure-api-key.",)))

    def test_model_patterns(self) -> None:
        self.assertTrue(model_matches("gpt-realtime*", "gpt-realtime-2025-08-28"))
        self.assertTrue(model_matches("gpt-realtime*", "gpt-realtime"))
        self.assertTrue(model_matches("*-mini", "gpt-4o-mini"))
        self.assertFalse(model_matches("gpt-4", "gpt-4o"))
        self.assertFalse(model_matches("gpt-[4]", "gpt-4"))  # no other wildcards than one *

    def test_modes(self) -> None:
        policy = APIKeyConfigTests.policy(self, api_key_policy("strict"))  # type: ignore[arg-type]
        strict = KeyCheck(policy)
        self.assertEqual(strict.authenticate(TEAM_A).name, "team-a")
        self.assertEqual(strict.authenticate(TEAM_B).name, "team-b")
        for presented, message in ((None, "no API Key found"), ("sk-wrong", "invalid credentials")):
            with self.assertRaises(KeyRefused) as refused:
                strict.authenticate(presented)
            self.assertEqual((refused.exception.status, refused.exception.message), (401, message))
        optional = KeyCheck(APIKeyConfigTests.policy(self, api_key_policy("optional")))  # type: ignore[arg-type]
        self.assertIsNone(optional.authenticate(None))
        self.assertRaises(KeyRefused, optional.authenticate, "sk-wrong")
        permissive = KeyCheck(APIKeyConfigTests.policy(self, api_key_policy("permissive")))  # type: ignore[arg-type]
        self.assertIsNone(permissive.authenticate("sk-wrong"))
        self.assertEqual(permissive.authenticate(TEAM_A).name, "team-a")
        with self.assertRaises(KeyRefused) as refused:
            KeyCheck.authorize(strict.authenticate(TEAM_A), "gpt-4o")
        self.assertEqual(refused.exception.status, 403)
        KeyCheck.authorize(strict.authenticate(TEAM_B), "anything")  # no allowedModels: every model


class APIKeyGatewayTests(TestCase):
    mode = "strict"
    backend_auth = True
    client_model = False
    fields = False

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        config = config_with_keys(upstream_port, self.mode, self.backend_auth, self.client_model, self.fields)
        self.log = io.StringIO()
        self.gateway, _, self.port = yield running_gateway(self, config, ENV, access_log=AccessLog(self.log))

    def url(self, model: str = "gpt-realtime") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model={model}"

    @inlineCallbacks
    def completion(self, key: str | None, model: str = "gpt-4") -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = yield treq.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", json={"model": model, "messages": []},
            headers=headers, persistent=False,
        )
        body = yield response.json()
        return response.code, body

    def one_response(self, key: str, subprotocol: bool = False) -> None:
        kwargs: dict[str, Any] = (
            {"subprotocols": ["realtime", f"openai-insecure-api-key.{key}"], "additional_headers": {}}
            if subprotocol else {"additional_headers": {"Authorization": f"Bearer {key}"}}
        )
        with open_client(self.url(), **kwargs) as ws:
            recv_event(ws)
            ws.send(json.dumps({"type": "response.create"}))
            while recv_event(ws)["type"] != "response.done":
                pass

    def consumer_tokens(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for (name, labels), value in registry_samples(self.gateway.metrics.registry).items():
            label = dict(labels)
            if name == "agw_gen_ai_tokens_total" and label["gen_ai_token_type"] in ("input", "output"):
                consumer = label["consumer"]
                sums[consumer] = sums.get(consumer, 0) + value
        return sums


class StrictKeysTests(APIKeyGatewayTests):
    @inlineCallbacks
    def test_http_refusals_before_upstream(self) -> Any:
        for key, expected in ((None, (401, "no API Key found")), ("sk-wrong", (401, "invalid credentials"))):
            code, body = yield self.completion(key)
            self.assertEqual((code, body["error"]["message"]), expected)
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_http_key_replaced_by_backend_key(self) -> Any:
        code, body = yield self.completion(TEAM_A)
        self.assertEqual(code, 200)
        self.assertEqual(self.fake.http_requests[-1].headers["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertNotIn(TEAM_A, repr(self.fake.http_requests))

    @inlineCallbacks
    def test_realtime_refusals_before_upstream(self) -> Any:
        status, body = yield deferToThread(handshake_status, self.url(), additional_headers={})
        self.assertEqual((status, json.loads(body)["error"]["message"]), (401, "no API Key found"))
        status, body = yield deferToThread(
            handshake_status, self.url("gpt-4o"), additional_headers={"Authorization": f"Bearer {TEAM_A}"},
        )
        self.assertEqual((status, json.loads(body)["error"]["code"]), (403, "model_not_allowed"))
        status, _ = yield deferToThread(
            handshake_status, self.url(), subprotocols=["openai-insecure-api-key.sk-wrong"], additional_headers={},
        )
        self.assertEqual(status, 401)
        self.assertEqual(self.fake.handshakes, [])

    @inlineCallbacks
    def test_tokens_attributed_to_consumers(self) -> Any:
        yield deferToThread(self.one_response, TEAM_A)
        yield deferToThread(self.one_response, TEAM_B, True)
        code, _ = yield self.completion(TEAM_B)
        self.assertEqual(code, 200)
        billed = sum(entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in self.fake.ledger)
        by_consumer = self.consumer_tokens()
        self.assertEqual(set(by_consumer), {"team-a", "team-b"})
        self.assertEqual(sum(by_consumer.values()), billed)
        first = self.fake.ledger[0].usage
        self.assertEqual(by_consumer["team-a"], first["input_tokens"] + first["output_tokens"])
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        self.assertEqual(
            {(r["event"], r.get("agw.consumer")) for r in records},
            {("realtime.response", "team-a"), ("realtime.session", "team-a"), ("realtime.response", "team-b"),
             ("realtime.session", "team-b"), ("http", "team-b")},
        )
        for handshake in self.fake.handshakes:
            self.assertEqual(handshake.headers["authorization"], f"Bearer {BACKEND_KEY}")
            self.assertEqual(handshake.protocols, ())
        for secret in (TEAM_A, TEAM_B):
            self.assertNotIn(secret, self.log.getvalue())
            self.assertNotIn(secret, repr(registry_samples(self.gateway.metrics.registry)))


class AllowedModelsTests(APIKeyGatewayTests):
    client_model = True

    @inlineCallbacks
    def test_http_model_not_allowed_is_403_before_upstream(self) -> Any:
        code, body = yield self.completion(TEAM_A, model="gpt-4o")
        self.assertEqual((code, body["error"]["code"]), (403, "model_not_allowed"))
        self.assertEqual(self.fake.http_requests, [])
        code, _ = yield self.completion(TEAM_A, model="gpt-4")
        self.assertEqual(code, 200)
        code, _ = yield self.completion(TEAM_B, model="gpt-4o")  # team-b: every model
        self.assertEqual(code, 200)


class MetadataFieldsTests(APIKeyGatewayTests):
    fields = True

    @inlineCallbacks
    def test_metadata_fields_label_metrics_and_log_lines(self) -> Any:
        yield deferToThread(self.one_response, TEAM_A)
        yield deferToThread(self.one_response, TEAM_B, True)
        samples = registry_samples(self.gateway.metrics.registry)
        histogram = {
            dict(labels)["cost_center"] for (name, labels), _ in samples.items()
            if name == "agentgateway_gen_ai_client_token_usage_sum"
        }
        self.assertEqual(histogram, {"42", ""})  # team-b's key has no cost_center
        tokens = {
            (dict(labels)["consumer"], dict(labels)["cost_center"]) for (name, labels), _ in samples.items()
            if name == "agw_gen_ai_tokens_total"
        }
        self.assertEqual(tokens, {("team-a", "42"), ("team-b", "")})
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        self.assertEqual({r.get("team.cost_center") for r in records if r.get("agw.consumer") == "team-a"}, {42})


class OptionalKeysTests(APIKeyGatewayTests):
    mode = "optional"

    @inlineCallbacks
    def test_no_key_passes_a_wrong_one_does_not(self) -> Any:
        code, _ = yield self.completion(None)
        self.assertEqual(code, 200)
        code, _ = yield self.completion("sk-wrong")
        self.assertEqual(code, 401)
        self.assertEqual(self.consumer_tokens(), {"": self.consumer_tokens()[""]})


class PermissiveKeysTests(APIKeyGatewayTests):
    mode = "permissive"

    @inlineCallbacks
    def test_wrong_key_passes_anonymously(self) -> Any:
        code, _ = yield self.completion("sk-wrong")
        self.assertEqual(code, 200)
        code, _ = yield self.completion(TEAM_A)
        self.assertEqual(code, 200)
        self.assertEqual(set(self.consumer_tokens()), {"", "team-a"})


class KeysWithoutBackendAuthTests(APIKeyGatewayTests):
    backend_auth = False

    @inlineCallbacks
    def test_client_key_is_not_forwarded(self) -> Any:
        """Without backendAuth the provider gets no Authorization at all: the client's key is agw's."""
        code, _ = yield self.completion(TEAM_A)
        self.assertEqual(code, 200)
        self.assertNotIn("authorization", self.fake.http_requests[-1].headers)
        yield deferToThread(self.one_response, TEAM_B, True)
        self.assertNotIn("authorization", self.fake.handshakes[-1].headers)
        self.assertEqual(self.fake.handshakes[-1].protocols, ())


# The same tests with the handshake through twisted.web (--legacy-http): the path embedders' sites take.
TwistedWebStrictKeysTests = on_twisted_web(StrictKeysTests)
