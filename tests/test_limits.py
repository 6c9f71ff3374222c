"""
Bounded by every client: each limit has a default, a knob, a clear error,
and a hostile client here that hits it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from agw.http import BodyRelay, HTTPOptions
from agw.metering import OTHER_MODEL, GatewayMetrics, ModelLabels, RouteLabels, TokenUsage
from agw.realtime import RelayOptions
from agw.serve import GatewaySite
from tests.support import (
    GatewayTestCase,
    handshake_status,
    on_twisted_web,
    open_client,
    raw_exchange,
    recv_event,
    status_and_json,
    wait_closed,
    wait_until,
)


def masked_frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """One client frame (RFC 6455 5.2), masked; payloads under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + mask + masked


class RequestBodyLimitTests(GatewayTestCase):
    http_options = HTTPOptions(max_request_body=1000, max_json_body=100)

    @inlineCallbacks
    def test_declared_length_over_limit_is_413_before_upload(self) -> Any:
        """Nothing but the head is sent: the answer must not wait for a body (nor promise 100 Continue)."""
        head = (
            b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 10737418240\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = yield deferToThread(raw_exchange, self.port, head)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:40])
        status, body = status_and_json(answer)
        self.assertEqual((status, body["error"]["code"]), (413, "request_too_large"))
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_chunked_upload_over_limit_is_413(self) -> Any:
        chunk = b"x" * 600
        request = (
            b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
        )
        answer = yield deferToThread(raw_exchange, self.port, request)
        self.assertEqual(status_and_json(answer)[0], 413)
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_within_limit_passes(self) -> Any:
        response = yield treq.post(f"{self.http_base}/files", data=b"y" * 1000, persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["body_size"]), (200, 1000))

    @inlineCallbacks
    def test_json_route_limit(self) -> Any:
        response = yield treq.post(
            f"{self.http_base}/chat/completions", json={"model": "m", "messages": [], "pad": "z" * 200}, persistent=False,
        )
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (413, "request_too_large"))
        self.assertEqual(self.fake.http_requests, [])


class BufferedBodiesLimitTests(GatewayTestCase):
    http_options = HTTPOptions(max_request_body=1000, max_buffered_bodies=1500)

    @inlineCallbacks
    def test_bodies_held_at_once_are_bounded(self) -> Any:
        """A slow upload holds what it has sent; the next one that does not fit beside it gets 503 until it is done."""
        head = b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        slow = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(slow.close)
        slow.sendall(head + b"a" * 600)
        yield wait_until(lambda: self.service_site().body_budget.held == 600)
        answer = yield deferToThread(raw_exchange, self.port, head + b"b" * 1000)
        self.assertIn(b"\r\nRetry-After: 1\r\n", answer)
        status, body = status_and_json(answer)
        self.assertEqual((status, body["error"]["code"]), (503, "too_many_uploads"))
        slow.sendall(b"a" * 400)
        finished = yield deferToThread(lambda: b"".join(iter(lambda: slow.recv(65536), b"")))
        self.assertEqual(status_and_json(finished)[1]["body_size"], 1000)
        yield wait_until(lambda: self.service_site().body_budget.held == 0)
        answer = yield deferToThread(raw_exchange, self.port, head + b"c" * 1000)
        self.assertEqual(status_and_json(answer)[0], 200)

    def service_site(self) -> Any:
        return self.service.binds[0].factory.site  # the BindFactory serves this site (inside TLS on HTTPS binds)


class StalledStreamTests(GatewayTestCase):
    http_options = HTTPOptions(body_idle_timeout=0.3)

    @inlineCallbacks
    def test_silent_stream_is_cut_off(self) -> Any:
        self.fake.stream_gate = Deferred()  # the stream stops after its first chunk, for good
        response = yield treq.post(
            f"{self.http_base}/chat/completions", json={"model": "m", "messages": [], "stream": True}, persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield self.assertFailure(treq.content(response), Exception)  # incomplete, not a clean end
        yield wait_until(lambda: not self.gateway.in_flight)
        (line,) = [json.loads(l) for l in self.access_log.getvalue().splitlines() if '"http"' in l]
        self.assertIs(line["agw.body_timed_out"], True)


class SessionLimitTests(GatewayTestCase):
    relay_options = RelayOptions(max_sessions=2)

    @inlineCallbacks
    def test_sessions_over_the_limit_get_503_until_one_ends(self) -> Any:
        url = f"{self.ws_base}/realtime?model=m"
        first = yield deferToThread(open_client, url)
        second = yield deferToThread(open_client, url)
        self.addCleanup(deferToThread, second.close)
        status, body = yield deferToThread(handshake_status, url)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (503, "too_many_sessions"))
        self.assertEqual(len(self.fake.handshakes), 2)  # the refused one never reached the provider
        yield deferToThread(first.close)
        yield wait_until(lambda: len(self.gateway.relays[0].slots) == 1)
        third = yield deferToThread(open_client, url)
        self.addCleanup(deferToThread, third.close)
        created = yield deferToThread(recv_event, third)
        self.assertEqual(created["type"], "session.created")


class FragmentLimitTests(GatewayTestCase):
    relay_options = RelayOptions(max_fragments=16)

    @inlineCallbacks
    def test_too_many_fragments_is_1009(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        yield deferToThread(recv_event, ws)
        frames = masked_frame(0x1, b'{"type":', fin=False)
        frames += b"".join(masked_frame(0x0, b" ", fin=False) for _ in range(40))
        yield deferToThread(ws.socket.sendall, frames)
        code, _ = yield deferToThread(wait_closed, ws)
        self.assertEqual(code, 1009)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)  # the provider's leg: the failure was not its peer's

    @inlineCallbacks
    def test_fragments_within_the_limit_pass(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        pieces = [b'{"type":', b'"test.echo",', b'"n":1}']
        frames = b"".join(masked_frame(0x1 if i == 0 else 0x0, p, fin=i == 2) for i, p in enumerate(pieces))
        yield deferToThread(ws.socket.sendall, frames)
        echoed = yield deferToThread(recv_event, ws)
        self.assertEqual(echoed, {"type": "test.echo", "n": 1})


class ModelLabelLimitTests(SynchronousTestCase):
    def test_client_chosen_models_cannot_grow_series_without_bound(self) -> None:
        metrics = GatewayMetrics(max_model_labels=3)
        route = RouteLabels.of(3000, "l", "r")
        hostile = [f"model-{i}" for i in range(50)] + ["x" * 500]
        for model in hostile:
            metrics.record_tokens(route, ModelLabels("chat", model, "served"), TokenUsage(input=1, output=1))
        values = {
            sample.labels["gen_ai_request_model"]
            for family in metrics.registry.collect() if family.name == "agentgateway_gen_ai_client_token_usage"
            for sample in family.samples
        }
        self.assertEqual(values, {"model-0", "model-1", "model-2", OTHER_MODEL})
        total = metrics.registry.get_sample_value(
            "agentgateway_gen_ai_client_token_usage_count",
            {"gen_ai_token_type": "input", "gen_ai_operation_name": "chat", "gen_ai_system": "openai",
             "gen_ai_request_model": OTHER_MODEL, "gen_ai_response_model": "served", **dict(zip(
                 ("bind", "gateway", "listener", "route", "route_rule"), route.values()))},
        )
        self.assertEqual(total, len(hostile) - 3)  # no token is lost to the cap


class _Upstream:
    """The part of an upstream body's transport BodyRelay uses."""

    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class _Request(DummyRequest):
    """DummyRequest with push producers (its own calls a pull producer in a loop)."""

    producer = None
    channel: object = "connected"  # twisted.web sets it to None when the client is gone

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class BodyIdleTimeoutTests(SynchronousTestCase):
    """The idle timer on a Clock: silence is measured from the last byte, not from the start."""

    def test_timer_restarts_with_every_chunk(self) -> None:
        clock = Clock()
        request = _Request([b""])
        relay = BodyRelay(request, None, lambda: None, clock=clock, idle_timeout=10.0)
        upstream = _Upstream()
        relay.makeConnection(upstream)
        for _ in range(5):
            clock.advance(9.9)
            relay.dataReceived(b"data: {}\n\n")
        self.assertFalse(upstream.stopped)
        clock.advance(10.0)
        self.assertEqual((relay.timed_out, upstream.stopped), (True, True))
        self.assertEqual(request.written, [b"data: {}\n\n"] * 5)

    def test_no_timer_left_after_the_body_ends(self) -> None:
        clock = Clock()
        relay = BodyRelay(_Request([b""]), None, lambda: None, clock=clock, idle_timeout=10.0)
        relay.makeConnection(_Upstream())
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.successResultOf(relay.done)


class _Capture(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        self.seen.append((dict(request.args), request.content.read()))
        return b"ok"


class FormBodyTests(TestCase):
    """
    twisted.web parses a POSTed form (multipart or URL-encoded) into
    C{request.args} by default: a second copy of the body in memory, built
    by a parser, for every upload. A gateway forwards bodies as bytes.
    """

    @inlineCallbacks
    def test_form_bodies_not_parsed(self) -> Any:
        from twisted.internet import reactor

        capture = _Capture()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(GatewaySite(capture, reactor))
        self.addCleanup(port.stopListening)
        multipart = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                     b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n" + b"x" * 5000 + b"\r\n--b--\r\n")
        for ctype, body in ((b"multipart/form-data; boundary=b", multipart), (b"application/x-www-form-urlencoded", b"a=1&b=2")):
            request = (b"POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: " + ctype
                       + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            answer = yield deferToThread(raw_exchange, port.getHost().port, request)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:40])
        self.assertEqual(capture.seen, [({}, multipart), ({}, b"a=1&b=2")])


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebRequestBodyLimitTests = on_twisted_web(RequestBodyLimitTests)
TwistedWebBufferedBodiesLimitTests = on_twisted_web(BufferedBodiesLimitTests)
TwistedWebStalledStreamTests = on_twisted_web(StalledStreamTests)
TwistedWebBodyIdleTimeoutTests = on_twisted_web(BodyIdleTimeoutTests)
TwistedWebFormBodyTests = on_twisted_web(FormBodyTests)
