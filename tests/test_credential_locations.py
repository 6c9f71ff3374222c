"""
Where a client credential can come in (Authorization, api-key and
x-api-key headers, the openai-insecure-api-key subprotocol, the api-key and
key query parameters), it is agw's when the route has an apiKey policy or a
backendAuth key: checked where agw reads keys, and never sent upstream, on
every route type (completions, passthrough, Realtime handshakes). Without
either, the client's credential is the provider's and passes as it came.
"""

from __future__ import annotations

import io
from typing import Any

import treq
import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import parse_config
from agw.config import APIKeyPolicy, ConfigError, KeyLocation, Policies
from agw.decisions import presented_key
from agw.metering import AccessLog
from agw.routing import forwarded_query, guard_headers
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    listening_fake,
    on_twisted_web,
    open_client,
    recv_event,
    running_gateway,
    seed_config_text,
)

AGW_KEY = "sk-agw-consumer-0123456789"
# Every query spelling of a credential the gateway must not forward (and what must stay).
CREDENTIAL_QUERY = f"api-key={CLIENT_KEY}&foo=1&key={CLIENT_KEY}&API-KEY={CLIENT_KEY}&api%2Dkey={CLIENT_KEY}&Key={CLIENT_KEY}"
CREDENTIAL_HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}", "api-key": CLIENT_KEY, "x-api-key": CLIENT_KEY}


class ForwardedQueryTests(SynchronousTestCase):
    """The pure rule: which query parameters leave, byte for byte the rest."""

    def test_credentials_dropped_others_kept_as_they_came(self) -> None:
        self.assertEqual(forwarded_query(CREDENTIAL_QUERY, True), "foo=1")
        query = "model=gpt-realtime&x=a%20b&api-key=k&empty=&flag&q=1;key=k;z=%7E"
        self.assertEqual(forwarded_query(query, True), "model=gpt-realtime&x=a%20b&empty=&flag&q=1;z=%7E")

    def test_nothing_dropped_when_the_credential_is_the_providers(self) -> None:
        self.assertEqual(forwarded_query(CREDENTIAL_QUERY, False), CREDENTIAL_QUERY)

    def test_the_api_key_location_parameter_is_dropped_too(self) -> None:
        self.assertEqual(forwarded_query("token=k&model=m", True, "token"), "model=m")
        self.assertEqual(forwarded_query("api-key=k&key=k", True), "")
        self.assertEqual(forwarded_query("", True), "")

    def test_presented_key_locations(self) -> None:
        headers = {"authorization": f"Bearer {AGW_KEY}", "x-api-key": "sk-x"}.get
        self.assertEqual(presented_key(None, headers), AGW_KEY)  # agentgateway's default: Authorization: Bearer
        self.assertEqual(presented_key(KeyLocation(header="x-api-key"), headers), "sk-x")
        self.assertEqual(presented_key(KeyLocation(header="authorization", prefix="bearer "), headers), AGW_KEY)
        self.assertIsNone(presented_key(KeyLocation(header="authorization", prefix="Basic "), headers))
        query = KeyLocation(query="api-key")
        self.assertEqual(presented_key(query, headers, "a=1&api-key=sk-q%2Bz&api-key=second"), "sk-q+z")  # the first
        self.assertIsNone(presented_key(query, headers, "API-KEY=sk-q"))  # the name as configured, as agentgateway
        self.assertEqual(presented_key(query, {}.get, "", ("realtime", f"openai-insecure-api-key.{AGW_KEY}")), AGW_KEY)


    def test_guard_webhooks_never_get_agws_key_headers(self) -> None:
        client = [("authorization", "Bearer a"), ("api-key", "b"), ("x-api-key", "c"), ("x-token", "d"), ("x-team", "t")]
        located = Policies(api_key=APIKeyPolicy(location=KeyLocation(header="x-token")))
        self.assertEqual(guard_headers(client, located), {"x-team": "t"})
        self.assertEqual(len(guard_headers(client, Policies())), 5)  # no apiKey: the client's own headers, as named


class LocationConfigTests(SynchronousTestCase):
    def location(self, spec: Any) -> Any:
        text = yaml.safe_dump({"binds": [{"port": 3000, "listeners": [{"routes": [{
            "backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}}}],
            "policies": {"apiKey": {"keys": [{"key": AGW_KEY}], "location": spec}},
        }]}]}]})
        return parse_config(text, {}).binds[0].listeners[0].routes[0].policies.api_key.location

    def test_header_and_query_parameter(self) -> None:
        self.assertEqual(self.location({"header": {"name": "X-API-Key"}}), KeyLocation(header="x-api-key"))
        self.assertEqual(
            self.location({"header": {"name": "Authorization", "prefix": "Bearer "}}),
            KeyLocation(header="authorization", prefix="Bearer "),
        )
        self.assertEqual(self.location({"queryParameter": {"name": "api-key"}}), KeyLocation(query="api-key"))

    def test_refused(self) -> None:
        for spec, message in (
            ({"cookie": {"name": "k"}}, ".location.cookie: supported by agentgateway but not by agw yet"),
            ({"expression": "request.headers['k']"}, ".location.expression: supported by agentgateway but not by agw yet"),
            ({"header": {"name": "x"}, "queryParameter": {"name": "k"}}, ".location: expected exactly one of header, queryParameter"),
            ({"queryParameter": {"name": ""}}, ".location.queryParameter.name: expected a parameter name"),
            ({"header": {"name": "a b"}}, ".location.header.name: not a header name"),
        ):
            with self.assertRaises(ConfigError) as e:
                self.location(spec)
            self.assertIn(message, str(e.exception))


class CredentialGatewayTests(TestCase):
    """The seed config (Realtime, completions, passthrough) as each test's class sets its policies."""

    backend_auth = True
    api_key: dict[str, Any] | None = None

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        data = yaml.safe_load(seed_config_text(upstream_port))
        for route in data["binds"][0]["listeners"][0]["routes"]:
            if not self.backend_auth:
                del route["policies"]["backendAuth"]
            if self.api_key is not None:
                route["policies"]["apiKey"] = self.api_key
        self.log = io.StringIO()
        _, _, self.port = yield running_gateway(
            self, yaml.safe_dump(data), {"OPENAI_API_KEY": BACKEND_KEY}, access_log=AccessLog(self.log),
        )

    @inlineCallbacks
    def http(self, path: str, query: str, headers: dict[str, str], method: str = "POST") -> Any:
        response = yield treq.request(
            method, f"http://127.0.0.1:{self.port}{path}?{query}", headers=headers,
            json={"model": "m", "messages": []} if method == "POST" else None, persistent=False,
        )
        yield response.content()
        return response.code

    def handshake(self, query: str, headers: dict[str, str], subprotocols: list[str] | None = None) -> None:
        kwargs: dict[str, Any] = {"additional_headers": headers}
        if subprotocols is not None:
            kwargs["subprotocols"] = subprotocols
        with open_client(f"ws://127.0.0.1:{self.port}/v1/realtime?model=m&{query}", **kwargs) as ws:
            recv_event(ws)

    def assert_no_credential(self, uri: str, headers: dict[str, str], expected_query: str) -> None:
        self.assertEqual(uri.partition("?")[2], expected_query)
        self.assertNotIn(CLIENT_KEY, uri)
        self.assertNotIn(AGW_KEY, uri)
        for name in ("api-key", "x-api-key"):
            self.assertNotIn(name, headers)
        self.assertNotIn(CLIENT_KEY, repr(headers))
        self.assertNotIn(AGW_KEY, repr(headers))
        for key in (CLIENT_KEY, AGW_KEY):  # nor logged: the access log has the path, never the query
            self.assertNotIn(key, self.log.getvalue())


class BackendAuthTests(CredentialGatewayTests):
    """backendAuth: the client's credentials, wherever they are, are replaced by the backend key."""

    @inlineCallbacks
    def test_completions_and_passthrough(self) -> Any:
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/v1/files", "POST")):
            code = yield self.http(path, CREDENTIAL_QUERY, CREDENTIAL_HEADERS, method)
            self.assertEqual(code, 200)
            seen = self.fake.http_requests[-1]
            self.assert_no_credential(seen.uri, seen.headers, "foo=1")
            self.assertEqual(seen.headers["authorization"], f"Bearer {BACKEND_KEY}")

    @inlineCallbacks
    def test_realtime_handshake(self) -> Any:
        protocols = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}"]
        yield deferToThread(self.handshake, CREDENTIAL_QUERY, CREDENTIAL_HEADERS, protocols)
        seen = self.fake.handshakes[-1]
        self.assert_no_credential(seen.uri, seen.headers, "model=m&foo=1")
        self.assertEqual(seen.headers["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertEqual(seen.protocols, ())


class APIKeyWithoutBackendAuthTests(CredentialGatewayTests):
    """An apiKey policy alone: the client's credentials are agw's, the provider gets none of them."""

    backend_auth = False
    api_key = {"mode": "strict", "keys": [{"key": AGW_KEY}]}

    @inlineCallbacks
    def test_completions_and_passthrough(self) -> Any:
        headers = {**CREDENTIAL_HEADERS, "Authorization": f"Bearer {AGW_KEY}"}
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET")):
            code = yield self.http(path, CREDENTIAL_QUERY, headers, method)
            self.assertEqual(code, 200)
            seen = self.fake.http_requests[-1]
            self.assert_no_credential(seen.uri, seen.headers, "foo=1")
            self.assertNotIn("authorization", seen.headers)

    @inlineCallbacks
    def test_realtime_handshake(self) -> Any:
        protocols = ["realtime", f"openai-insecure-api-key.{AGW_KEY}"]
        yield deferToThread(self.handshake, CREDENTIAL_QUERY, {"api-key": CLIENT_KEY, "x-api-key": CLIENT_KEY}, protocols)
        seen = self.fake.handshakes[-1]
        self.assert_no_credential(seen.uri, seen.headers, "model=m&foo=1")
        self.assertNotIn("authorization", seen.headers)
        self.assertEqual(seen.protocols, ())


class QueryParameterLocationTests(CredentialGatewayTests):
    """apiKey.location queryParameter (the way Azure lets browsers authenticate): checked there, then dropped."""

    api_key = {"mode": "strict", "keys": [{"key": AGW_KEY}], "location": {"queryParameter": {"name": "api-key"}}}

    @inlineCallbacks
    def test_checked_in_the_query_and_never_forwarded(self) -> Any:
        code = yield self.http("/v1/chat/completions", f"api-key={AGW_KEY}&foo=1", {})
        self.assertEqual(code, 200)
        self.assert_no_credential(self.fake.http_requests[-1].uri, self.fake.http_requests[-1].headers, "foo=1")
        refused = yield self.http("/v1/chat/completions", "api-key=sk-wrong", {})
        missing = yield self.http("/v1/chat/completions", "", {"Authorization": f"Bearer {AGW_KEY}"})  # not where it is read
        self.assertEqual((refused, missing, len(self.fake.http_requests)), (401, 401, 1))
        yield deferToThread(self.handshake, f"api-key={AGW_KEY}", {})
        self.assert_no_credential(self.fake.handshakes[-1].uri, self.fake.handshakes[-1].headers, "model=m")


class HeaderLocationTests(CredentialGatewayTests):
    """apiKey.location header (Azure's api-key style): checked there; no client credential header goes upstream."""

    api_key = {"mode": "strict", "keys": [{"key": AGW_KEY}], "location": {"header": {"name": "x-api-key"}}}

    @inlineCallbacks
    def test_checked_in_the_header_and_never_forwarded(self) -> Any:
        code = yield self.http("/v1/chat/completions", "foo=1", {"x-api-key": AGW_KEY, "api-key": CLIENT_KEY})
        self.assertEqual(code, 200)
        seen = self.fake.http_requests[-1]
        self.assert_no_credential(seen.uri, seen.headers, "foo=1")
        self.assertEqual(seen.headers["authorization"], f"Bearer {BACKEND_KEY}")
        refused = yield self.http("/v1/chat/completions", "", {"Authorization": f"Bearer {AGW_KEY}"})
        self.assertEqual(refused, 401)


class ProviderCredentialsTests(CredentialGatewayTests):
    """Neither policy: the client's credential is the provider's and goes as it came."""

    backend_auth = False

    @inlineCallbacks
    def test_passed_as_they_came(self) -> Any:
        code = yield self.http("/v1/models", CREDENTIAL_QUERY, CREDENTIAL_HEADERS, "GET")
        self.assertEqual(code, 200)
        seen = self.fake.http_requests[-1]
        self.assertEqual(seen.uri, f"/v1/models?{CREDENTIAL_QUERY}")
        self.assertEqual((seen.headers["api-key"], seen.headers["x-api-key"]), (CLIENT_KEY, CLIENT_KEY))
        yield deferToThread(self.handshake, f"api-key={CLIENT_KEY}", CREDENTIAL_HEADERS)
        self.assertEqual(self.fake.handshakes[-1].uri, f"/v1/realtime?model=m&api-key={CLIENT_KEY}")


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebCredentialGatewayTests = on_twisted_web(CredentialGatewayTests)
