"""
agw's own front door (httptools): what it does that twisted.web's server
did not. A completions body over the route's limit is refused from its
Content-Length before it is sent; a passthrough upload streams upstream as
it arrives, never spooled, in bounded memory; pipelined requests are
answered in order; a connection that served completions can go on to a
Realtime upgrade (the relay's) or a WebRTC endpoint (twisted.web's); a head too
large, an HTTP/1.0 client, a client that leaves mid-upload.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
from collections import Counter
from typing import Any

import httptools

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.config import MiB
from tests.support import GatewayTestCase, wait_until
from tests.wire_support import gateway_to, ok, raw_request, read_response, status_and_error

COMPLETION = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def completion_request(connection: bytes = b"keep-alive") -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Connection: %s\r\nContent-Length: %d\r\n\r\n%s" % (connection, len(COMPLETION), COMPLETION))


def read_statuses(sock: socket.socket, count: int | None) -> list[int]:
    """
    The statuses of the next C{count} responses on C{sock} (C{None}: all
    until the close), each read whole (llhttp frames them, not agw).
    """
    statuses: list[int] = []

    class Reader:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Reader())
    while count is None or len(statuses) < count:
        data = sock.recv(65536)
        if not data:
            if count is None:
                return statuses
            raise AssertionError(f"closed after {statuses}")
        parser.feed_data(data)
    return statuses


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class CountingUpstream(Protocol):
    """An upload's upstream: counts the body's bytes as they come, answers 200 when all are in."""

    def __init__(self, factory: CountingFactory) -> None:
        self.factory, self.head, self.length = factory, b"", -1

    def dataReceived(self, data: bytes) -> None:
        if self.length < 0:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            self.length = int(length[0].split(b":")[1])
        self.factory.received += len(data)
        if self.factory.received >= self.length:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


class CountingFactory(Factory):
    def __init__(self) -> None:
        self.received = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        return CountingUpstream(self)



class ScriptedCase(TestCase):
    """agw (the seed config) in front of an upstream that answers every request 200 C{{}}."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, self.service = yield gateway_to(self, ok)


class LimitsFromTheHeadTests(ScriptedCase):

    @inlineCallbacks
    def test_a_64_mib_completions_body_is_refused_before_it_is_sent(self) -> Any:
        def run() -> tuple[bytes, bytes, bool]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (64 * MiB))
                return read_response(sock)  # nothing of the body was sent

        refused = yield deferToThread(run)
        self.assertEqual(status_and_error(refused), (413, "request_too_large"))
        self.assertIn(b"33554432", refused[1])  # the completions route's limit (--max-json-body), not the bind's 512 MiB
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_a_head_too_large_is_400(self) -> Any:
        huge = b"X-Filler: " + b"a" * 70_000 + b"\r\n"
        refused = yield deferToThread(raw_request, self.port, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + huge + b"\r\n")
        self.assertEqual(status_and_error(refused), (400, "invalid_request"))
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_a_body_in_one_byte_chunks_arrives_whole(self) -> Any:
        body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"abc" * 1000 + b'"}]}'
        chunks = b"".join(b"1\r\n%s\r\n" % body[i:i + 1] for i in range(len(body))) + b"0\r\n\r\n"
        head, _, _ = yield deferToThread(
            raw_request, self.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
        )
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        (sent,) = self.upstream.requests
        self.assertEqual(json.loads(sent.body)["messages"][0]["content"], "abc" * 1000)

    @inlineCallbacks
    def test_framings_read_two_ways_are_refused(self) -> Any:
        """What a second reader could frame otherwise (request smuggling) is 400 and goes nowhere."""
        heads = [
            b"Content-Length: 3\r\nContent-Length: 40\r\n",
            b"Content-Length: 3\r\nContent-Length: 3\r\n",
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked, identity\r\n",
            b"X-Folded: a\r\n b\r\n",
            b"Content-Length : 3\r\n",
        ]
        for head in heads:
            refused = yield deferToThread(
                raw_request, self.port, b"POST /v1/files HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n0\r\n\r\n",
            )
            self.assertEqual(status_and_error(refused), (400, "invalid_request"), head)
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_pipelined_requests_are_answered_in_order(self) -> Any:
        models = b"GET /v1/models?n=%d HTTP/1.1\r\nHost: gw\r\n\r\n"

        def run() -> list[int]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(models % 1 + completion_request() + models % 3)
                return read_statuses(sock, 3)

        statuses = yield deferToThread(run)
        self.assertEqual(statuses, [200] * 3)
        self.assertEqual([r.head.split(b" ")[1] for r in self.upstream.requests],
                         [b"/v1/models?n=1", b"/v1/chat/completions", b"/v1/models?n=3"])

    @inlineCallbacks
    def test_an_http_10_client_gets_an_answer_that_ends_at_the_close(self) -> Any:
        head, body, complete = yield deferToThread(
            raw_request, self.port, b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s"
            % (len(COMPLETION), COMPLETION),
        )
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertNotIn(b"transfer-encoding", head.lower())  # an HTTP/1.0 client cannot read chunks
        self.assertEqual(body, b"{}")

    @inlineCallbacks
    def test_a_chunked_completions_body_is_read_whole(self) -> Any:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (COMPLETION[:10], COMPLETION[10:])) + b"0\r\n\r\n"
        head, body, _ = yield deferToThread(
            raw_request, self.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
        )
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        (sent,) = self.upstream.requests
        self.assertEqual(json.loads(sent.body)["messages"], [{"role": "user", "content": "hi"}])
        self.assertEqual(sent.headers["content-length"], str(len(sent.body)))


class StreamedUploadTests(TestCase):
    size = 200 * 1000 * 1000

    @inlineCallbacks
    def setUp(self) -> Any:
        self.counted = CountingFactory()
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.counted)
        self.addCleanup(listening.stopListening)
        from tests.support import running_gateway, seed_config_text

        _, _, self.port = yield running_gateway(self, seed_config_text(listening.getHost().port))

    @inlineCallbacks
    def test_a_200_mb_passthrough_upload_streams_in_bounded_memory(self) -> Any:
        piece = b"u" * MiB
        first_seen = threading.Event()

        def upload() -> tuple[bytes, bytes, bool]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n" % self.size)
                sock.sendall(piece)
                # Spooled (as twisted.web did), nothing would reach the upstream before the whole body had.
                if not first_seen.wait(10):
                    raise AssertionError("the upstream saw nothing of the body while it was being sent")
                sent = len(piece)
                while sent < self.size:
                    sock.sendall(piece[: min(len(piece), self.size - sent)])
                    sent += min(len(piece), self.size - sent)
                return read_response(sock)

        baseline, peak = rss_bytes(), [0]

        def sample() -> None:
            peak[0] = max(peak[0], rss_bytes() - baseline)
            if self.counted.received:
                first_seen.set()

        sampling = LoopingCall(sample)
        sampling.start(0.01)
        try:
            head, body, _ = yield deferToThread(upload)
        finally:
            sampling.stop()
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(self.counted.received, self.size)
        self.assertLess(peak[0], 64 * MiB, "the gateway held the upload in memory")


class HandOffTests(GatewayTestCase):
    @inlineCallbacks
    def test_a_connection_goes_on_from_completions_to_a_realtime_upgrade(self) -> Any:
        upgrade = (b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

        def run() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(completion_request())
                completed = read_response(sock)[0]
                sock.sendall(upgrade)
                switched = b""
                while b"\r\n\r\n" not in switched:
                    switched += sock.recv(65536)
                return completed, switched

        completed, switched = yield deferToThread(run)
        self.assertTrue(completed.startswith(b"HTTP/1.1 200"), completed)
        self.assertTrue(switched.startswith(b"HTTP/1.1 101"), switched)
        yield wait_until(lambda: len(self.fake.handshakes) == 1)

    @inlineCallbacks
    def test_a_connection_goes_on_from_completions_to_a_webrtc_endpoint(self) -> Any:
        secret = b'{"session": {"type": "realtime", "model": "gpt-realtime"}}'

        def run() -> list[int]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(completion_request() + b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: gw\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(secret), secret)
                             + completion_request(b"close"))
                return read_statuses(sock, 3)

        statuses = yield deferToThread(run)
        self.assertEqual(statuses, [200, 200, 200])

    @inlineCallbacks
    def test_a_client_that_leaves_mid_upload_is_recorded_499(self) -> Any:
        def run() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n{\"model\"")

        yield deferToThread(run)
        yield wait_until(lambda: [json.loads(line)["http.status"] for line in self.access_log.getvalue().splitlines()] == [499])
        self.assertEqual(self.fake.http_requests, [])
        self.assertEqual(self.flushLoggedErrors(), [])


class ConnectionTimeTests(ScriptedCase):
    """One timer per connection: a head must arrive whole in time; a silent keep-alive connection is closed."""

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.site = self.service.site_of(0)
        self.clock = self.site.upload_clock = Clock()
        self.timeout = self.site.timeOut

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        return sock

    @inlineCallbacks
    def test_a_head_trickled_in_is_cut_off_at_the_timeout(self) -> Any:
        sock = yield deferToThread(self.connect)
        yield deferToThread(sock.sendall, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n")
        yield wait_until(lambda: self.clock.getDelayedCalls())
        self.clock.advance(self.timeout - 1)
        yield deferToThread(sock.sendall, b"X-Slow: 1\r\n")  # bytes keep coming, the head does not end
        self.clock.advance(2)
        refused = yield deferToThread(read_response, sock)
        self.assertEqual(status_and_error(refused), (408, "request_timeout"))
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_a_silent_keep_alive_connection_is_closed(self) -> Any:
        sock = yield deferToThread(self.connect)
        yield deferToThread(sock.sendall, completion_request())
        head, _, _ = yield deferToThread(read_response, sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.clock.advance(self.timeout / 2)
        self.assertEqual(len(self.upstream.requests), 1)  # still open: a second request is served
        yield deferToThread(sock.sendall, completion_request())
        yield deferToThread(read_response, sock)
        self.clock.advance(self.timeout + 1)
        closed = yield deferToThread(sock.recv, 1)
        self.assertEqual(closed, b"")


class ChunkedOverTheRouteLimitTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        from agw.http import HTTPOptions

        self.upstream, self.port, _, _ = yield gateway_to(self, ok, http_options=HTTPOptions(max_json_body=1000))

    @inlineCallbacks
    def test_a_chunked_completions_body_over_the_limit_is_413(self) -> Any:
        body = b'{"model": "m", "messages": [], "pad": "' + b"x" * 2000 + b'"}'
        for pieces in ((body,), (body[:10], body[10:])):  # in with its head, or arriving after it
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
            refused = yield deferToThread(
                raw_request, self.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
            )
            self.assertEqual(status_and_error(refused), (413, "request_too_large"))
        self.assertEqual(self.upstream.requests, [])


class NoCyclesTests(GatewayTestCase):
    """A forwarded request leaves no reference cycle behind: its objects go when it is done, not at the next GC."""

    @inlineCallbacks
    def test_forwarded_requests_leave_no_cycles(self) -> Any:
        def run(count: int) -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                for _ in range(count):
                    sock.sendall(completion_request())
                    read_response(sock)

        yield deferToThread(run, 5)  # pools, caches and children made once
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            yield deferToThread(run, 20)
            gc.collect()
            left = [type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        ours = Counter(name for name in left if name.startswith(("agw.", "twisted.")) and not name.startswith("agw.testing"))
        # The connection itself (transport and protocol hold each other) is one; what each of 20 requests left is 20.
        self.assertEqual({name: count for name, count in ours.items() if count >= 20}, {})


class DeepPipelineTests(ScriptedCase):
    """A client pipelining thousands of requests behind a slow one: a bounded queue, no deep recursion."""

    @inlineCallbacks
    def test_thousands_pipelined_behind_a_forwarded_one(self) -> Any:
        refused = b"GET /v1/../x HTTP/1.1\r\nHost: gw\r\n\r\n"  # agw's own 400, answered as each starts

        def run() -> list[int]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n" + refused * 2999)
                return read_statuses(sock, None)

        statuses = yield deferToThread(run)
        # The first, then the pipelined ones read with it up to the bound, in order; then the close.
        self.assertEqual(statuses[0], 200)
        self.assertEqual(set(statuses[1:]), {400})
        self.assertLessEqual(len(statuses), 1 + 32)
        self.assertEqual(len(self.upstream.requests), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
