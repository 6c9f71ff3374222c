"""Embedding agw in an existing Twisted application."""

from __future__ import annotations

from typing import Any

import treq
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from agw import Gateway, parse_config
from agw.testing import REALTIME_MODEL, FakeOpenAI
from tests.support import BACKEND_KEY, run_session, seed_config_text, wait_until


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"app"


class EmbeddingTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake = FakeOpenAI()
        upstream = yield self.fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        self.config = parse_config(seed_config_text(upstream.getHost().port), {"OPENAI_API_KEY": BACKEND_KEY})

    @inlineCallbacks
    def test_resource_in_existing_site(self) -> Any:
        """The gateway's resource under /ai of an application's own Site."""
        gateway = Gateway(self.config)
        root = Resource()
        root.putChild(b"hello", _Hello())
        root.putChild(b"ai", gateway.resource())
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
        self.addCleanup(port.stopListening)
        self.addCleanup(gateway.close_sessions)
        base = f"127.0.0.1:{port.getHost().port}"

        hello = yield treq.get(f"http://{base}/hello", persistent=False)
        self.assertEqual((yield hello.content()), b"app")
        done = yield deferToThread(run_session, f"ws://{base}/ai/v1", 2)
        self.assertEqual(len(done), 2)
        self.assertEqual(self.fake.handshakes[0].uri, "/v1/realtime?model=gpt-realtime")
        registry = gateway.metrics.registry
        billed = self.fake.billed()
        for token_type in ("input", "output"):
            self.assertEqual(
                registry.get_sample_value(
                    "agentgateway_gen_ai_client_token_usage_sum",
                    {
                        "gen_ai_token_type": token_type, "gen_ai_operation_name": "chat", "gen_ai_system": "openai",
                        "gen_ai_request_model": "gpt-realtime", "gen_ai_response_model": REALTIME_MODEL,
                        "bind": "0", "gateway": "bind/0", "listener": "listener0", "route": "route0", "route_rule": "",
                    },
                ),
                billed[("chat", REALTIME_MODEL, token_type)],
            )

    @inlineCallbacks
    def test_service_in_existing_multiservice(self) -> Any:
        application = MultiService()
        service = Gateway(self.config).service(interface="127.0.0.1")
        service.setServiceParent(application)
        application.startService()
        self.addCleanup(application.stopService)
        yield wait_until(service.is_ready)
        response = yield treq.get(f"http://127.0.0.1:{service.readiness.port.getHost().port}/healthz/ready", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        done = yield deferToThread(run_session, f"ws://127.0.0.1:{service.port_of(0)}/v1", 1)
        self.assertEqual(len(done), 1)
        yield application.stopService()
        self.assertFalse(service.is_ready())


class NoRouteTests(TestCase):
    @inlineCallbacks
    def test_unmatched_path_is_json_404(self) -> Any:
        config = parse_config(
            "binds:\n- port: 0\n  listeners:\n  - routes:\n    - matches:\n      - path:\n          exact: /v1/models\n"
            "      backends:\n      - ai:\n          name: openai\n          provider:\n            openAI: {}\n",
            {},
        )
        gateway = Gateway(config)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(gateway.resource()))
        self.addCleanup(port.stopListening)
        response = yield treq.get(f"http://127.0.0.1:{port.getHost().port}/v1/other", persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (404, "route_not_found"))
