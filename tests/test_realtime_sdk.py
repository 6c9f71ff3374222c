"""
The seed walkthrough end to end: the openai SDK's Realtime client through
agw (seed config) to the fake upstream, tokens checked on /metrics.
"""

from __future__ import annotations

from typing import Any

from openai import OpenAI
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread

from agw.testing import REALTIME_MODEL
from tests.support import BACKEND_KEY, CLIENT_KEY, TOKEN_METRIC, GatewayTestCase, on_twisted_web, run_session, token_sums


class SeedWalkthroughTests(GatewayTestCase):
    @inlineCallbacks
    def test_every_response_counted(self) -> Any:
        """
        A session of several responses shows the sum of all of them per token
        type and model, equal to what the upstream billed (agentgateway would
        show only the last).
        """
        done = yield deferToThread(run_session, self.ws_base, 4)
        self.assertEqual(len(done), 4)
        samples = yield self.scrape()
        sums = token_sums(samples)
        billed = self.fake.billed()
        self.assertEqual(
            {k: float(v) for k, v in billed.items()},
            sums,
        )
        self.assertEqual(billed[("chat", REALTIME_MODEL, "input")], sum(d["response"]["usage"]["input_tokens"] for d in done))
        labels = dict(next(labels for name, labels in samples if name == TOKEN_METRIC + "_count"))
        self.assertEqual(labels["gen_ai_request_model"], "gpt-realtime")
        self.assertEqual(labels["gen_ai_response_model"], REALTIME_MODEL)
        self.assertEqual(labels["gen_ai_system"], "openai")
        self.assertEqual(labels["bind"], "0")
        self.assertEqual(labels["gateway"], "bind/0")
        self.assertEqual(labels["route"], "route0")

    @inlineCallbacks
    def test_backend_key_replaces_client_key(self) -> Any:
        """Upstream sees the backend key, not the client's, and no compression offer."""
        yield deferToThread(run_session, self.ws_base, 1)
        (handshake,) = self.fake.handshakes
        self.assertEqual(handshake.headers["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertNotIn(CLIENT_KEY, repr(handshake))
        self.assertNotIn("sec-websocket-extensions", handshake.headers)
        self.assertEqual(handshake.uri, "/v1/realtime?model=gpt-realtime")


class ReconnectTests(GatewayTestCase):
    @inlineCallbacks
    def test_sdk_reconnects_after_1011_through_agw(self) -> Any:
        """The upstream fails a session with 1011; the SDK reconnects through agw and carries on."""
        reconnecting: list[Any] = []
        first_session_open: Deferred[None] = Deferred()
        fake = self.fake

        def session() -> list[str]:
            client = OpenAI(api_key=CLIENT_KEY, websocket_base_url=self.ws_base)
            created = []
            with client.realtime.connect(
                model="gpt-realtime", on_reconnecting=lambda event: reconnecting.append(event), initial_delay=0.05
            ) as connection:
                for event in connection:
                    if event.type == "session.created":
                        created.append(event.session.id)
                        if len(created) == 1:
                            reactor.callFromThread(first_session_open.callback, None)
                        else:
                            connection.response.create(response={"output_modalities": ["text"]})
                    elif event.type == "response.done":
                        return created
            return created

        running = deferToThread(session)
        yield first_session_open
        fake.sessions[0].close(1011, "internal error")
        created = yield running
        self.assertEqual(len(created), 2)
        self.assertEqual(len(reconnecting), 1)
        self.assertEqual(len(fake.handshakes), 2)
        self.assertEqual(fake.closes[0], (1011, "internal error"))


# The same tests with the handshake through twisted.web (--legacy-http): the path embedders' sites take.
TwistedWebSeedWalkthroughTests = on_twisted_web(SeedWalkthroughTests)
