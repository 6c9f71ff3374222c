"""
Request-targets: only origin-form reaches a backend, the upstream URL's
host comes from the config alone, and the path a route was chosen by is
the path that goes upstream.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from agw import Gateway, parse_config
from agw.routing import BackendTarget, BadTarget, OriginTarget, parse_target
from agw.testing import FakeOpenAI
from tests.support import BACKEND_KEY, GatewayTestCase, on_twisted_web, raw_exchange, seed_config_text, status_and_json

HOSTILE_TARGETS = [
    b".evil.example/v1/models",  # glued onto api.openai.com: another host
    b"0:9/v1/models",  # glued onto 127.0.0.1 (port 80 elided): 127.0.0.10:9
    b"@evil.example/v1/models",
    b"http://evil.example/v1/models",  # absolute-form
    b"evil.example:443",  # authority-form
    b"*",  # asterisk-form
    b"/v1/../admin",
    b"/v1/%2e%2e/admin",
    b"/v1/%2E./admin",
    b"/v1/./models",
    b"/v1%2Fchat%2Fcompletions",
    b"/v1%5cmodels",
    b"/v1/models%zz",
    b"/v1/models%4",
    b"/v1/mod\xc3\xa9ls",
    b"/v1/models#fragment",
    b"/v1/models?x=\x01",
]


class ParseTargetTests(SynchronousTestCase):
    def test_hostile_targets_refused(self) -> None:
        for raw in HOSTILE_TARGETS:
            with self.subTest(raw=raw):
                self.assertRaises(BadTarget, parse_target, raw)

    def test_normalised(self) -> None:
        cases = {
            b"/v1/chat/complet%69ons": "/v1/chat/completions",
            b"/v1//chat///completions/": "/v1/chat/completions",
            b"/v1/files/a%3fb%20c": "/v1/files/a%3Fb%20c",
            b"/": "/",
            b"//": "/",
            b"/v1/%7Euser": "/v1/~user",
        }
        for raw, path in cases.items():
            with self.subTest(raw=raw):
                self.assertEqual(parse_target(raw).path, path)

    def test_query_passes_as_it_came(self) -> None:
        self.assertEqual(parse_target(b"/v1/realtime?model=gpt-realtime&x=%2F/?"), OriginTarget("/v1/realtime", "model=gpt-realtime&x=%2F/?"))
        self.assertEqual(OriginTarget("/a", "b=1").uri, b"/a?b=1")


class BackendURLTests(SynchronousTestCase):
    def test_host_comes_from_config_only(self) -> None:
        target = BackendTarget("api.openai.com", 443, True)
        self.assertEqual(target.url("/v1/models", "a=1"), "https://api.openai.com/v1/models?a=1")
        for path in (".evil.example/x", "//evil.example/x", "x"):
            with self.subTest(path=path):
                self.assertRaises(ValueError, target.url, path, "")


class TargetEndToEndTests(GatewayTestCase):
    @inlineCallbacks
    def test_hostile_targets_get_400_and_reach_nothing(self) -> Any:
        for raw in HOSTILE_TARGETS:
            method = b"CONNECT" if raw == b"evil.example:443" else b"OPTIONS" if raw == b"*" else b"GET"
            request = method + b" " + raw + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n"
            answer = yield deferToThread(raw_exchange, self.port, request)
            status, body = status_and_json(answer)
            if raw in (b"/v1/mod\xc3\xa9ls", b"/v1/models?x=\x01"):  # bytes no request-line may hold: twisted.web's 400
                self.assertEqual((status, body["error"]["code"]), (400, "invalid_request"), raw)
                continue
            self.assertEqual((status, body["error"]["code"]), (400, "invalid_request_target"), raw)
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_spelling_variants_of_completions_are_metered(self) -> Any:
        """The seed's catch-all route passes unknown paths through unmetered: no spelling of completions may."""
        for path in ("/v1/chat/complet%69ons", "/v1/chat/completions/", "/v1//chat/completions"):
            response = yield treq.post(
                f"http://127.0.0.1:{self.port}{path}", json={"model": "m", "messages": []}, persistent=False,
            )
            self.assertEqual(response.code, 200, path)
            yield response.content()
        self.assertEqual([r.uri for r in self.fake.http_requests], ["/v1/chat/completions"] * 3)
        metrics = yield self.scrape()
        counted = sum(
            value for (name, labels), value in metrics.items()
            if name == "agentgateway_gen_ai_client_token_usage_count" and ("gen_ai_token_type", "input") in labels
        )
        self.assertEqual(counted, 3)

    @inlineCallbacks
    def test_escapes_stay_escaped_upstream(self) -> Any:
        response = yield treq.get(f"http://127.0.0.1:{self.port}/v1/files/a%3Fb%20c/content?x=%2F", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(self.fake.http_requests[-1].uri, "/v1/files/a%3Fb%20c/content?x=%2F")


class EmbeddedTargetTests(TestCase):
    @inlineCallbacks
    def test_mount_forwards_raw_relative_path(self) -> Any:
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        gateway = Gateway(parse_config(seed_config_text(upstream.getHost().port), {"OPENAI_API_KEY": BACKEND_KEY}))
        root = Resource()
        root.putChild(b"ai", gateway.resource())
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
        self.addCleanup(port.stopListening)
        self.addCleanup(gateway.close_sessions)
        response = yield treq.get(f"http://127.0.0.1:{port.getHost().port}/ai/v1/files/x%3Fy%2520z?q=1", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(fake.http_requests[-1].uri, "/v1/files/x%3Fy%2520z?q=1")
        dots = yield deferToThread(
            raw_exchange, port.getHost().port, b"GET /ai/v1/%2e%2e/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(status_and_json(dots)[0], 400)
        self.assertEqual(len(fake.http_requests), 1)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebTargetEndToEndTests = on_twisted_web(TargetEndToEndTests)
