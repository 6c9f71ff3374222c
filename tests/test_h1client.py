"""
agw's upstream HTTP/1.1 client (L{agw.http.UpstreamClient} over
httptools) against real upstreams on loopback: keep-alive reuse, each
body framing, bodies that do not exist (HEAD, 204, 304), interim answers,
gzip, back pressure both ways, the one retry of a stale pooled
connection, cancellation, limits, and TLS per lane.
"""

from __future__ import annotations

import gzip
from typing import Any

from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import RequestTransmissionFailed, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from agw.http import BytesBodyProducer, HTTPOptions, UpstreamClient
from agw.http._client import tls_failure
from agw.http._h1response import HeadTooLarge
from agw.routing import BackendTarget, HeaderList
from agw.testing import TestCA
from tests.support import wait_until
from tests.wire_support import RawRequest, ScriptedUpstream, answer

OK = answer(b"200 OK", [(b"Content-Length", b"2")], b"ok")


@define
class Upstream(ScriptedUpstream):
    """A L{ScriptedUpstream} that also counts the connections that closed."""

    closed: int = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = super().buildProtocol(addr)
        lost = protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            self.closed += 1
            lost(reason)

        protocol.connectionLost = connection_lost  # type: ignore[method-assign]
        return protocol


class Reader(Protocol):
    """Collects a body; C{done} fires with the exception that ended it. C{pause_at}: pause after this many bytes."""

    def __init__(self, pause_at: int | None = None, stop_at: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done: Deferred[BaseException] = Deferred()
        self._pause_at, self._stop_at = pause_at, stop_at

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self._pause_at is not None and self.size >= self._pause_at:
            self._pause_at = None
            self.transport.pauseProducing()
        if self._stop_at is not None and self.size >= self._stop_at:
            self._stop_at = None
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.done.callback(reason.value)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


@inlineCallbacks
def read(response: Any) -> Any:
    reader = Reader()
    response.deliverBody(reader)
    reason = yield reader.done
    return reader.body, reason


@implementer(IBodyProducer)
class Upload:
    """A streaming body of C{length} bytes, a piece per reactor turn while not paused; records its pauses and stop."""

    def __init__(self, length: int, piece: int = 1 << 20) -> None:
        self.length, self.sent, self.stopped = length, 0, False
        self.paused: Deferred[int] = Deferred()
        self._piece = b"x" * piece
        self._pausing = False
        self._next: Any = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer, self.finished = consumer, Deferred()
        self._schedule()
        return self.finished

    def _schedule(self) -> None:
        if self._next is None:
            self._next = reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._next = None
        if self._pausing or self.stopped:
            return
        piece = self._piece[: self.length - self.sent]
        self.sent += len(piece)
        self._consumer.write(piece)
        if self.sent >= self.length:
            self.finished.callback(None)
        elif not self._pausing and not self.stopped:
            self._schedule()

    def pauseProducing(self) -> None:
        self._pausing = True
        if not self.paused.called:
            self.paused.callback(self.sent)

    def resumeProducing(self) -> None:
        self._pausing = False
        if not self.stopped and self.sent < self.length:
            self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()


class Sink(Protocol):
    """
    Takes one request with a Content-Length body, reading nothing until
    told (L{Sinks.resume}), then answers 200; with C{refuse}, answers 413 as
    soon as the head arrives and reads on.
    """

    def __init__(self, factory: Sinks) -> None:
        self.factory, self.buffer, self.body, self.length = factory, b"", 0, None

    def connectionMade(self) -> None:
        self.factory.protocols.append(self)
        if not self.factory.refuse:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.length is None:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, data = self.buffer.partition(b"\r\n\r\n")
            self.length = int(RawRequest(head, b"", 0, 0).headers["content-length"])
            if self.factory.refuse:
                self.transport.write(answer(b"413 Payload Too Large", [(b"Content-Length", b"0"), (b"Connection", b"close")])[0])
        self.body += len(data)
        if self.body >= self.length and not self.factory.refuse:
            self.transport.write(OK[0])

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.factory.closed += 1


class Sinks(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.refuse, self.protocols, self.closed = refuse, [], 0

    def buildProtocol(self, addr: Any) -> Sink:
        return Sink(self)


@implementer(IPushProducer)
class Pump(Protocol):
    """Answers a request with a C{total}-byte body, written as fast as the transport takes it; records its pauses."""

    total = 64 << 20
    piece = b"y" * 65536

    def __init__(self) -> None:
        self.sent, self.paused, self.pauses = 0, False, 0

    def dataReceived(self, data: bytes) -> None:
        if self.sent == 0 and b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.total)
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.total:
            self.sent += len(self.piece)
            self.transport.write(self.piece)
        if self.sent >= self.total:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True


class H1ClientTestCase(TestCase):
    @inlineCallbacks
    def listen(self, factory: Any, tls: Any = None) -> Any:
        if tls is None:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def scripted(self, script: Any) -> Any:
        """A scripted upstream on loopback and a client; sets C{upstream}, C{url} (its origin) and C{client}."""
        self.upstream = Upstream(script)
        port = yield self.listen(self.upstream)
        self.url = f"http://127.0.0.1:{port}"
        self.client = self.make_client()

    def make_client(self, **options: Any) -> UpstreamClient:
        client = UpstreamClient(reactor, HTTPOptions(**options))
        self.addCleanup(client.close)
        return client

    def get(self, path: str = "/", method: bytes = b"GET", headers: Any = (), body: Any = None, target: Any = None) -> Any:
        return self.client.request(method, self.url + path, list(headers), body, target)


class KeepAliveTests(H1ClientTestCase):
    @inlineCallbacks
    def test_sequential_requests_share_one_connection(self) -> Any:
        yield self.scripted(lambda request: answer(b"200 OK", [(b"Content-Length", b"1")], b"%d" % request.index))
        for index in range(5):
            response = yield self.get("/v1/models?x=%d" % index)
            body, reason = yield read(response)
            self.assertEqual((response.code, body), (200, b"%d" % index))
            self.assertIsInstance(reason, ResponseDone)
        self.assertEqual(self.upstream.connections, 1)
        self.assertEqual(self.upstream.requests[2].head.split(b"\r\n")[0], b"GET /v1/models?x=2 HTTP/1.1")

    @inlineCallbacks
    def test_connection_close_is_not_pooled(self) -> Any:
        yield self.scripted(lambda _: answer(b"200 OK", [(b"Content-Length", b"2"), (b"Connection", b"close")], b"ok"))
        for _ in range(2):
            response = yield self.get()
            body, _ = yield read(response)
            self.assertEqual(body, b"ok")
            self.assertEqual(response.headers.getRawHeaders(b"connection"), [b"close"])  # as the upstream sent it
        self.assertEqual(self.upstream.connections, 2)
        yield wait_until(lambda: self.upstream.closed == 2)  # the client closed what the upstream left open

    @inlineCallbacks
    def test_idle_connection_closed_by_the_upstream_is_dropped(self) -> Any:
        yield self.scripted(lambda _: OK)
        yield read((yield self.get()))
        for protocol in list(self.client.pool._idle.values())[0]:
            protocol.transport.loseConnection()  # as if the upstream had: either way the pool forgets it
        yield wait_until(lambda: not any(self.client.pool._idle.values()))
        yield read((yield self.get()))
        self.assertEqual(self.upstream.connections, 2)

    @inlineCallbacks
    def test_idle_connections_are_bounded(self) -> Any:
        yield self.scripted(lambda _: OK)
        self.client = self.make_client(max_persistent_per_host=2)
        pending = [self.get() for _ in range(4)]  # at once: four connections
        responses = []
        for one in pending:
            responses.append((yield one))
        for response in responses:
            yield read(response)
        self.assertEqual(self.upstream.connections, 4)
        self.assertEqual(sum(len(idle) for idle in self.client.pool._idle.values()), 2)
        yield wait_until(lambda: self.upstream.closed == 2)

    @inlineCallbacks
    def test_a_connection_idle_too_long_is_not_reused(self) -> Any:
        yield self.scripted(lambda _: OK)
        yield read((yield self.get()))
        self.client.pool.max_idle_age = -1.0  # every idle connection is older than that
        yield read((yield self.get()))
        self.assertEqual(self.upstream.connections, 2)
        yield wait_until(lambda: self.upstream.closed == 1)

    @inlineCallbacks
    def test_the_legacy_agent_takes_the_same_headers(self) -> Any:
        yield self.scripted(lambda _: OK)
        self.client = UpstreamClient(reactor, HTTPOptions(), legacy=True)
        self.addCleanup(self.client.close)
        for headers in (HeaderList([(b"x-one", b"1")]), [(b"x-one", b"1")], Headers({b"x-one": [b"1"]})):
            response = yield self.client.request(b"GET", self.url + "/", headers, None)
            body, _ = yield read(response)
            self.assertEqual((response.code, body), (200, b"ok"))
        self.assertEqual([request.headers["x-one"] for request in self.upstream.requests], ["1", "1", "1"])
        self.assertEqual(self.upstream.connections, 1)

    @inlineCallbacks
    def test_headers_in_any_form(self) -> Any:
        yield self.scripted(lambda _: OK)
        forms = [
            Headers({b"X-One": [b"1"], b"Host": [b"api.example"]}),
            HeaderList([(b"x-one", b"1")]),
            [(b"x-one", b"1"), (b"content-length", b"99")],  # framing is the client's own
        ]
        for headers in forms:
            yield read((yield self.client.request(b"GET", self.url + "/", headers, None)))
        first, second, third = (request.headers for request in self.upstream.requests)
        self.assertEqual((first["x-one"], first["host"]), ("1", "api.example"))
        self.assertEqual((second["x-one"], second["host"]), ("1", self.url.removeprefix("http://")))
        self.assertNotIn("content-length", third)
        self.assertEqual(third["accept-encoding"], "gzip")
        heads = [request.head for request in self.upstream.requests]
        self.assertEqual([head.lower().count(b"\r\nhost:") for head in heads], [1, 1, 1])

    @inlineCallbacks
    def test_a_line_break_in_a_header_is_refused(self) -> Any:
        yield self.scripted(lambda _: OK)
        yield self.assertFailure(self.get(headers=[(b"x-a", b"1\r\nx-b: 2")]), ValueError)
        self.assertEqual(self.upstream.requests, [])


def framed(status: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", close: bool = False) -> Any:
    return lambda _: answer(status, headers, body, close)


class FramingTests(H1ClientTestCase):
    @inlineCallbacks
    def test_content_length(self) -> Any:
        yield self.scripted(framed(b"200 OK", [(b"Content-Length", b"11")], b"hello world"))
        response = yield self.get()
        self.assertEqual((response.length, response.version, response.phrase), (11, (b"HTTP", 1, 1), b"OK"))
        body, reason = yield read(response)
        self.assertEqual(body, b"hello world")
        self.assertIsInstance(reason, ResponseDone)

    @inlineCallbacks
    def test_chunked(self) -> Any:
        chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        yield self.scripted(framed(b"200 OK", [(b"Transfer-Encoding", b"chunked")], chunks))
        response = yield self.get()
        # It came whole with its head: its length is known (the client gets it in one write, with a length).
        self.assertEqual(response.length, 11)
        self.assertEqual(response.headers.getRawHeaders(b"transfer-encoding"), [b"chunked"])
        body, reason = yield read(response)
        self.assertEqual(body, b"hello world")
        self.assertIsInstance(reason, ResponseDone)
        yield read((yield self.get()))
        self.assertEqual(self.upstream.connections, 1)

    @inlineCallbacks
    def test_chunked_still_arriving(self) -> Any:
        rest = Deferred()

        class Later(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                rest.addCallback(lambda _: self.transport.write(b"6\r\n world\r\n0\r\n\r\n"))

        self.url = f"http://127.0.0.1:{(yield self.listen(Factory.forProtocol(Later)))}"
        self.client = self.make_client()
        response = yield self.get()
        self.assertIs(response.length, UNKNOWN_LENGTH)
        reading = read(response)
        rest.callback(None)
        body, reason = yield reading
        self.assertEqual(body, b"hello world")
        self.assertIsInstance(reason, ResponseDone)

    @inlineCallbacks
    def test_until_close(self) -> Any:
        yield self.scripted(framed(b"200 OK", [(b"Content-Type", b"text/plain")], b"all of it", close=True))
        response = yield self.get()
        self.assertIs(response.length, UNKNOWN_LENGTH)
        body, reason = yield read(response)
        self.assertEqual(body, b"all of it")
        self.assertIsInstance(reason, PotentialDataLoss)

    @inlineCallbacks
    def test_short_body_fails(self) -> Any:
        yield self.scripted(framed(b"200 OK", [(b"Content-Length", b"100")], b"short", close=True))
        body, reason = yield read((yield self.get()))
        self.assertEqual(body, b"short")
        self.assertIsInstance(reason, ResponseFailed)

    @inlineCallbacks
    def test_bodiless_answers(self) -> Any:
        def script(request: RawRequest) -> tuple[bytes, bool]:
            path = request.head.split(b" ")[1]
            if request.method == b"HEAD":
                return answer(b"200 OK", [(b"Content-Length", b"10"), (b"Content-Type", b"text/plain")])
            if path == b"/204":
                return answer(b"204 No Content", [])
            if path == b"/304":
                return answer(b"304 Not Modified", [(b"Content-Length", b"10"), (b"ETag", b'"x"')])
            return OK

        yield self.scripted(script)
        for path, method, code in (("/", b"HEAD", 200), ("/204", b"GET", 204), ("/304", b"GET", 304), ("/", b"GET", 200)):
            response = yield self.get(path, method)
            body, reason = yield read(response)
            self.assertEqual((response.code, body), (code, b"" if code != 200 or method == b"HEAD" else b"ok"))
            self.assertIsInstance(reason, ResponseDone)
            if method == b"HEAD":
                self.assertEqual((response.length, response.headers.get(b"content-length")), (0, b"10"))
        self.assertEqual(self.upstream.connections, 1)  # no body was waited for, none was misread

    @inlineCallbacks
    def test_interim_answers_are_skipped(self) -> Any:
        yield self.scripted(lambda _: (b"HTTP/1.1 100 Continue\r\n\r\n" + OK[0], False))
        response = yield self.get(method=b"POST", body=BytesBodyProducer(b"{}"))
        self.assertEqual(response.code, 200)
        body, _ = yield read(response)
        self.assertEqual(body, b"ok")

    @inlineCallbacks
    def test_gzip_is_decoded(self) -> Any:
        data = b"hello gzip " * 10000
        packed = gzip.compress(data)
        yield self.scripted(framed(
            b"200 OK", [(b"Content-Encoding", b"gzip"), (b"Content-Length", b"%d" % len(packed)), (b"X-A", b"1")], packed,
        ))
        response = yield self.get()
        self.assertEqual(self.upstream.requests[0].headers["accept-encoding"], "gzip")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.assertEqual([name for name, _ in response.headers.pairs], [b"x-a"])
        body, reason = yield read(response)
        self.assertEqual(body, data)
        self.assertIsInstance(reason, ResponseDone)

    @inlineCallbacks
    def test_other_encodings_pass_through(self) -> Any:
        yield self.scripted(framed(b"200 OK", [(b"Content-Encoding", b"br"), (b"Content-Length", b"3")], b"\x01\x02\x03"))
        response = yield self.get()
        self.assertEqual((response.length, response.headers.get(b"content-encoding")), (3, b"br"))
        body, _ = yield read(response)
        self.assertEqual(body, b"\x01\x02\x03")

    @inlineCallbacks
    def test_a_head_too_large_fails(self) -> Any:
        yield self.scripted(framed(b"200 OK", [(b"X-Big", b"b" * 70000), (b"Content-Length", b"2")], b"ok"))
        failure = yield self.assertFailure(self.get(), ResponseFailed)
        self.assertTrue(failure.reasons[0].check(HeadTooLarge))

    @inlineCallbacks
    def test_a_head_that_never_ends_fails(self) -> Any:
        yield self.scripted(lambda _: (b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 100000, False))
        failure = yield self.assertFailure(self.get(), ResponseFailed)
        self.assertTrue(failure.reasons[0].check(HeadTooLarge))
        yield wait_until(lambda: self.upstream.closed == 1)

    @inlineCallbacks
    def test_garbage_fails(self) -> Any:
        yield self.scripted(lambda _: (b"SMTP ready\r\n\r\n", False))
        yield self.assertFailure(self.get(), ResponseFailed)
        yield wait_until(lambda: self.upstream.closed == 1)


class BackPressureTests(H1ClientTestCase):
    @inlineCallbacks
    def test_a_slow_reader_pauses_the_upstream(self) -> Any:
        pumps: list[Pump] = []

        def build() -> Pump:
            pumps.append(Pump())
            return pumps[-1]

        self.url = f"http://127.0.0.1:{(yield self.listen(Factory.forProtocol(build)))}"
        self.client = self.make_client()
        response = yield self.get()
        reader = Reader(pause_at=1)
        response.deliverBody(reader)
        # Paused after its first bytes: the socket buffers fill, then the upstream's transport stops its producer.
        yield wait_until(lambda: pumps[0].paused and pumps[0].sent > (1 << 20))
        self.assertLess(pumps[0].sent, Pump.total // 2)
        self.assertLess(reader.size, Pump.total // 2)
        reader.transport.resumeProducing()
        reason = yield reader.done
        self.assertIsInstance(reason, ResponseDone)
        self.assertEqual(reader.size, Pump.total)

    @inlineCallbacks
    def test_a_slow_upstream_pauses_the_upload(self) -> Any:
        sinks = Sinks()
        self.url = f"http://127.0.0.1:{(yield self.listen(sinks))}"
        self.client = self.make_client()
        upload = Upload(50 << 20)
        pending = self.get(method=b"POST", body=upload)
        sent = yield upload.paused
        self.assertLess(sent, upload.length)
        yield wait_until(lambda: sinks.protocols)
        sinks.protocols[0].transport.resumeProducing()
        response = yield pending
        body, _ = yield read(response)
        self.assertEqual((response.code, body, sinks.protocols[0].body), (200, b"ok", upload.length))

    @inlineCallbacks
    def test_an_early_refusal_stops_the_upload(self) -> Any:
        sinks = Sinks(refuse=True)
        self.url = f"http://127.0.0.1:{(yield self.listen(sinks))}"
        self.client = self.make_client()
        upload = Upload(50 << 20, piece=64 << 10)
        response = yield self.get(method=b"POST", body=upload)
        self.assertEqual(response.code, 413)
        self.assertTrue(upload.stopped)
        self.assertLess(upload.sent, upload.length)
        _, reason = yield read(response)
        self.assertIsInstance(reason, ResponseDone)
        yield wait_until(lambda: sinks.closed == 1)  # half an upload on it: not pooled
        self.assertFalse(any(self.client.pool._idle.values()))

    @inlineCallbacks
    def test_chunked_upload(self) -> Any:
        received = []

        class Raw(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)
                if b"".join(received).endswith(b"0\r\n\r\n"):
                    self.transport.write(OK[0])

        self.url = f"http://127.0.0.1:{(yield self.listen(Factory.forProtocol(Raw)))}"
        self.client = self.make_client()

        @implementer(IBodyProducer)
        class Unknown:
            length = UNKNOWN_LENGTH

            def startProducing(self, consumer: Any) -> Deferred[None]:
                for piece in (b"hello ", b"", b"world"):
                    consumer.write(piece)
                return succeed(None)

            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...
            def stopProducing(self) -> None: ...

        response = yield self.get(method=b"POST", body=Unknown())
        self.assertEqual(response.code, 200)
        head, _, body = b"".join(received).partition(b"\r\n\r\n")
        self.assertIn(b"\r\ntransfer-encoding: chunked", head)
        self.assertEqual(body, b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
        yield read(response)

    @inlineCallbacks
    def test_a_failing_body_fails_the_request(self) -> Any:
        yield self.scripted(lambda _: (b"", False))

        @implementer(IBodyProducer)
        class Broken:
            length = 10

            def startProducing(self, consumer: Any) -> Deferred[None]:
                consumer.write(b"12345")
                return fail(OSError("disk gone"))

            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...
            def stopProducing(self) -> None: ...

        failure = yield self.assertFailure(self.get(method=b"POST", body=Broken()), RequestTransmissionFailed)
        self.assertTrue(failure.reasons[0].check(OSError))
        yield wait_until(lambda: self.upstream.closed == 1)


def one_answer_per_connection(request: RawRequest) -> tuple[bytes, bool]:
    """Answers the first request of a connection; closes on the next one without a byte (an idle timeout's race)."""
    return OK if request.index == 0 else (b"", True)


class RetryTests(H1ClientTestCase):
    @inlineCallbacks
    def test_a_get_on_a_stale_connection_is_retried_once(self) -> Any:
        yield self.scripted(one_answer_per_connection)
        for _ in range(3):
            response = yield self.get()
            body, _ = yield read(response)
            self.assertEqual(body, b"ok")
        self.assertEqual(self.upstream.connections, 3)
        self.assertEqual([r.index for r in self.upstream.requests], [0, 1, 0, 1, 0])

    @inlineCallbacks
    def test_a_post_is_not_sent_twice(self) -> Any:
        yield self.scripted(one_answer_per_connection)
        yield read((yield self.get(method=b"POST", body=BytesBodyProducer(b"upload"))))
        yield self.assertFailure(self.get(method=b"POST", body=BytesBodyProducer(b"upload")), ResponseNeverReceived)
        self.assertEqual([r.method for r in self.upstream.requests], [b"POST", b"POST"])

    @inlineCallbacks
    def test_a_new_connection_is_not_retried(self) -> Any:
        yield self.scripted(lambda _: (b"", True))
        yield self.assertFailure(self.get(), ResponseNeverReceived)
        self.assertEqual(self.upstream.connections, 1)


class CancellationTests(H1ClientTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        yield self.scripted(lambda request: OK if b" /ok " in request.head else (b"", False))

    @inlineCallbacks
    def test_cancelled_before_the_head(self) -> Any:
        pending = self.get("/hang")
        yield wait_until(lambda: self.upstream.requests)
        pending.cancel()
        yield self.assertFailure(pending, CancelledError)
        yield wait_until(lambda: self.upstream.closed == 1)
        yield read((yield self.get("/ok")))
        self.assertEqual(self.upstream.connections, 2)

    @inlineCallbacks
    def test_cancelled_while_connecting(self) -> Any:
        pending = self.get("/ok")
        pending.cancel()
        yield self.assertFailure(pending, CancelledError)
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_stopped_mid_body(self) -> Any:
        self.upstream.script = framed(b"200 OK", [(b"Content-Length", b"100")], b"0123456789")
        response = yield self.get()
        reader = Reader(stop_at=1)
        response.deliverBody(reader)
        reason = yield reader.done
        self.assertIsInstance(reason, ResponseFailed)
        yield wait_until(lambda: self.upstream.closed == 1)
        self.upstream.script = lambda _: OK
        yield read((yield self.get()))
        self.assertEqual(self.upstream.connections, 2)


class TLSTests(H1ClientTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA.make()
        self.upstream = Upstream(lambda _: OK)
        self.port = yield self.listen(self.upstream, tls=self.ca.server_options())
        self.url = f"https://127.0.0.1:{self.port}"
        self.client = self.make_client()

    def target(self, root: bytes, hostname: str | None) -> BackendTarget:
        return BackendTarget("127.0.0.1", self.port, True, tls_hostname=hostname, trust_root=root)

    @inlineCallbacks
    def test_verified_with_the_lane_trust_root(self) -> Any:
        for _ in range(2):
            body, _ = yield read((yield self.get(target=self.target(self.ca.ca_pem, self.ca.hostname))))
            self.assertEqual(body, b"ok")
        self.assertEqual(self.upstream.connections, 1)

    @inlineCallbacks
    def test_a_verification_failure_is_recognised(self) -> Any:
        other = TestCA.make()
        failure = yield self.assertFailure(self.get(target=self.target(other.ca_pem, self.ca.hostname)), ResponseNeverReceived)
        self.assertTrue(tls_failure(failure))
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_lanes_do_not_share_connections(self) -> Any:
        by_name, by_address = self.target(self.ca.ca_pem, self.ca.hostname), self.target(self.ca.ca_pem, None)
        for target in (by_name, by_address, by_name, by_address):
            body, _ = yield read((yield self.get(target=target)))
            self.assertEqual(body, b"ok")
        self.assertEqual(self.upstream.connections, 2)
        # And a lane that does not trust the upstream does not get the others' verified connection.
        yield self.assertFailure(self.get(target=self.target(TestCA.make().ca_pem, self.ca.hostname)), ResponseNeverReceived)
        self.assertEqual(self.upstream.connections, 3)
