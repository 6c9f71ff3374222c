"""
A large JSON request body is decoded in a thread, not on the reactor (a
32 MiB C{json.loads} would hold every other connection for a quarter of a
second); a small one is decoded at once, where a thread would cost more
than it saves. The forwarder on a L{Clock} whose thread pool the test runs.
"""

from __future__ import annotations

import io
import json
from typing import Any

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from agw.config import Policies, RouteType
from agw.http import HTTPForwarder, HTTPOptions
from agw.metering import GatewayMetrics, RouteLabels
from agw.routing import BackendTarget, RouteContext
from tests.support import GatewayTestCase

THRESHOLD = 4096


class ManualPool:
    """A thread pool whose work runs when the test says (L{run})."""

    def __init__(self) -> None:
        self.work: list[tuple[Any, ...]] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        self.work.append((on_result, f, args, kwargs))

    def run(self) -> None:
        work, self.work = self.work, []
        for on_result, f, args, kwargs in work:
            try:
                result = f(*args, **kwargs)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


class ReactorWithPool(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.pool = ManualPool()

    def getThreadPool(self) -> ManualPool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class RecordingClient:
    options = HTTPOptions(json_thread_threshold=THRESHOLD)

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def request(self, method: bytes, url: str, headers: Any, body: Any, target: Any = None) -> Deferred[Any]:
        written: list[bytes] = []

        class Connection:
            write = written.append

            def registerProducer(self, producer: Any, streaming: bool) -> None:
                """Written at once."""

            def unregisterProducer(self) -> None:
                """Done."""

        body.startProducing(Connection())  # a body agw has read is written at once
        self.sent.append(b"".join(written))
        return Deferred()


class JSONThreadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ReactorWithPool()
        self.client = RecordingClient()
        context = RouteContext(
            self.reactor, BackendTarget("upstream.test", 80, False), Policies(), GatewayMetrics(),
            RouteLabels.of(3000, "l", "r"), model_override="gpt-4",
        )
        self.forwarder = HTTPForwarder(RouteType.COMPLETIONS, self.client, context)  # type: ignore[arg-type]

    def post(self, body: dict[str, Any]) -> DummyRequest:
        request = DummyRequest([b"v1", b"chat", b"completions"])
        request.method, request.uri, request.path = b"POST", b"/v1/chat/completions", b"/v1/chat/completions"
        request.content = io.BytesIO(json.dumps(body).encode())
        self.forwarder.render(request)
        return request

    def test_a_large_body_is_decoded_in_a_thread(self) -> None:
        self.post({"model": "m", "messages": [{"role": "user", "content": "x" * THRESHOLD}]})
        self.assertEqual(len(self.client.sent), 0)  # not decoded on the reactor: waiting for the pool
        self.assertEqual(len(self.reactor.pool.work), 1)
        self.reactor.pool.run()
        (sent,) = self.client.sent
        self.assertEqual(json.loads(sent)["model"], "gpt-4")

    def test_a_small_body_is_decoded_at_once(self) -> None:
        self.post({"model": "m", "messages": []})
        self.assertEqual(self.reactor.pool.work, [])
        self.assertEqual(json.loads(self.client.sent[0])["model"], "gpt-4")

    def test_a_large_body_that_is_not_json_is_still_the_clients_400(self) -> None:
        request = DummyRequest([b"v1", b"chat", b"completions"])
        request.method, request.uri, request.path = b"POST", b"/v1/chat/completions", b"/v1/chat/completions"
        request.content = io.BytesIO(b"[" * (THRESHOLD * 2))
        self.forwarder.render(request)
        self.reactor.pool.run()
        self.assertEqual(request.responseCode, 400)
        self.assertEqual(json.loads(b"".join(request.written))["error"]["code"], "invalid_json")


class ThreadedDecodeEndToEndTests(GatewayTestCase):
    """Through a listening gateway: bodies decoded in the reactor's thread pool are forwarded, or refused, as any."""

    http_options = HTTPOptions(json_thread_threshold=1024)

    @inlineCallbacks
    def test_forwarded_and_refused_as_before(self) -> Any:
        big = "y" * 50_000
        response = yield treq.post(
            f"{self.http_base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": big}]},
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(self.fake.http_requests[-1].json["model"], "gpt-4")  # the seed's model override applied
        duplicate = b'{"model": "a", "model": "b", "input": "%s"}' % big.encode()
        response = yield treq.post(f"{self.http_base}/chat/completions", data=duplicate, persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (400, "duplicate_json_key"))
