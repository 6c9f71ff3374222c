"""
The seed walkthrough end to end: the openai SDK's Realtime client through
agw (seed config) to the fake upstream, tokens checked on /metrics.
"""

from __future__ import annotations

from typing import Any

from openai import OpenAI
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from agw.testing import REALTIME_MODEL
from tests.support import BACKEND_KEY, CLIENT_KEY, TOKEN_METRIC, GatewayTestCase, token_sums


def run_session(ws_base: str, responses: int) -> list[dict[str, Any]]:
    """A blocking SDK session (run in a thread): N text responses; returns the response.done events."""
    client = OpenAI(api_key=CLIENT_KEY, websocket_base_url=ws_base)
    done = []
    with client.realtime.connect(model="gpt-realtime") as connection:
        for i in range(responses):
            connection.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Say hello {i}"}]}
            )
            connection.response.create(response={"output_modalities": ["text"]})
            for event in connection:
                if event.type == "response.done":
                    done.append(event.model_dump())
                    break
    return done


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
