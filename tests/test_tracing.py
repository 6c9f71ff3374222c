"""
config.tracing: spans over OTLP/HTTP to a receiver on loopback (a
twisted.web resource decoding the OTLP protobuf), checked against the fake
provider's own usage: a span per HTTP request and per Realtime session, a
child per response, the client's trace continued, the provider's request
made a child of agw's span.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from agw.config import TracingConfig, parse_config
from agw.metering import NO_SPAN
from agw.testing import REALTIME_MODEL
from agw.tracing import OTelSpans
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    catalog_price,
    listening_fake,
    run_session,
    running_gateway,
    seed_config_text,
)

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class OTLPReceiver(Resource):
    """POST /v1/traces: OTLP/HTTP protobuf, kept as plain dicts of each span."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def render_POST(self, request: Request) -> bytes:
        self.headers.append({k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()})
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.content.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "name": span.name, "trace": span.trace_id.hex(), "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "kind": span.kind, "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "status": span.status.code,
                        "attributes": {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes},
                    })
        request.setHeader(b"content-type", b"application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()


class TracingTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, fake_port = yield listening_fake(self)
        self.receiver = OTLPReceiver()
        listening = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        config = yaml.safe_load(seed_config_text(fake_port))
        config["config"]["tracing"] = {
            "otlpEndpoint": f"http://127.0.0.1:{listening.getHost().port}", "otlpProtocol": "http",
            "randomSampling": True, "headers": {"x-collector-token": "t0ken"},
        }
        self.gateway, self.service, self.port = yield running_gateway(self, yaml.safe_dump(config))

    def completion(self, traceparent: str | None) -> dict[str, Any]:
        import urllib.request

        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
        if traceparent:
            headers["traceparent"] = traceparent
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions", body, headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"status": response.status, "body": response.read()}

    @inlineCallbacks
    def test_spans_carry_the_providers_usage(self) -> Any:
        done = yield deferToThread(run_session, f"ws://127.0.0.1:{self.port}/v1", 2)
        answered = yield deferToThread(self.completion, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        self.assertEqual(answered["status"], 200)
        yield self.service.stopService()  # flushes the exporter
        spans = self.receiver.spans
        self.assertEqual(self.receiver.headers[0]["x-collector-token"], "t0ken")

        (session,) = [s for s in spans if s["name"] == "realtime gpt-realtime"]
        responses = sorted((s for s in spans if s["parent"] == session["id"]), key=lambda s: s["start"])
        self.assertEqual([s["name"] for s in responses], ["chat gpt-realtime"] * 2)
        for span, event, billed in zip(responses, done, self.fake.ledger[:2]):
            attributes = span["attributes"]
            usage = event["response"]["usage"]
            self.assertEqual(usage, billed.usage)
            self.assertEqual(
                (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]),
                (usage["input_tokens"], usage["output_tokens"]),
            )
            self.assertEqual(attributes["gen_ai.response.model"], REALTIME_MODEL)
            self.assertAlmostEqual(Decimal(str(attributes["agw.ai.usage.cost.total"])), catalog_price(usage), places=12)
            self.assertGreater(attributes["gen_ai.server.time_to_first_token"], 0)
            self.assertTrue(session["start"] <= span["start"] < span["end"] <= session["end"])
        self.assertEqual(session["attributes"]["agw.responses"], 2)
        self.assertEqual(session["attributes"]["http.path"], "/v1/realtime")
        # The provider's handshake carried agw's session span as its parent.
        self.assertRegex(self.fake.handshakes[0].headers["traceparent"], f"^00-{session['trace']}-{session['id']}-[0-9a-f][13579bdf]$")

        (http,) = [s for s in spans if s["name"].startswith("chat gpt-4")]
        self.assertEqual((http["trace"], http["parent"]), (CLIENT_TRACE, CLIENT_SPAN))  # the client's trace, continued
        billed = self.fake.ledger[-1]  # what the provider billed for the completion
        self.assertEqual(
            (http["attributes"]["gen_ai.usage.input_tokens"], http["attributes"]["gen_ai.usage.output_tokens"], http["attributes"]["http.status"]),
            (billed.usage["input_tokens"], billed.usage["output_tokens"], 200),
        )
        self.assertGreater(http["attributes"]["gen_ai.server.time_to_first_token"], 0)
        self.assertRegex(self.fake.http_requests[-1].headers["traceparent"], f"^00-{CLIENT_TRACE}-{http['id']}-[0-9a-f][13579bdf]$")
        exported = json.dumps(spans)
        for secret in (BACKEND_KEY, CLIENT_KEY):
            self.assertNotIn(secret, exported)


class SamplingTests(SynchronousTestCase):
    """agentgateway's sampling: randomSampling for new traces (default none), clientSampling for continued ones (default all)."""

    def spans(self, **sampling: float) -> OTelSpans:
        spans = OTelSpans(TracingConfig("http://127.0.0.1:9", **sampling), chance=lambda: 0.5)
        self.addCleanup(spans.shutdown)
        return spans

    def test_defaults_trace_only_what_the_client_traces(self) -> None:
        spans = self.spans()
        self.assertIs(spans.start("GET", 0.0, None), NO_SPAN)
        continued = spans.start("GET", 0.0, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        self.assertIsNotNone(continued.traceparent)
        self.assertIn(CLIENT_TRACE, continued.traceparent or "")

    def test_shares(self) -> None:
        self.assertIsNot(self.spans(random_sampling=0.6).start("GET", 0.0, None), NO_SPAN)  # 0.5 < 0.6
        self.assertIs(self.spans(random_sampling=0.4).start("GET", 0.0, None), NO_SPAN)
        self.assertIs(self.spans(client_sampling=0.0).start("GET", 0.0, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), NO_SPAN)
        self.assertIs(self.spans().start("GET", 0.0, "garbage"), NO_SPAN)  # no valid parent: a new trace, not sampled


class TracingConfigTests(SynchronousTestCase):
    def parse(self, tracing: dict[str, Any]) -> Any:
        config = yaml.safe_load(seed_config_text(1))
        config["config"]["tracing"] = tracing
        return parse_config(yaml.safe_dump(config), {"OPENAI_API_KEY": "k"}).tracing

    def test_agentgateways_fields(self) -> None:
        tracing = self.parse({"otlpEndpoint": "http://collector:4318/", "randomSampling": "0.25", "clientSampling": False})
        self.assertEqual((tracing.url, tracing.random_sampling, tracing.client_sampling), ("http://collector:4318/v1/traces", 0.25, 0.0))

    def test_what_agw_does_not_do_is_refused(self) -> None:
        from agw.config import ConfigError

        for tracing, message in (
            ({"otlpEndpoint": "http://c:4317", "otlpProtocol": "grpc"}, "otlpProtocol grpc is supported by agentgateway but not by agw yet"),
            ({"otlpEndpoint": "http://c:4318", "randomSampling": "request.path == '/'"}, "CEL expressions are not supported"),
            ({"otlpEndpoint": "c:4318"}, "expected an http:// or https:// URL"),
            ({"otlpEndpoint": "http://c:4318", "fields": {}}, "supported by agentgateway but not by agw yet"),
        ):
            with self.assertRaises(ConfigError) as e:
                self.parse(tracing)
            self.assertIn(message, str(e.exception))
