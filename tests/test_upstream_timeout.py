"""
C{--upstream-timeout} is the upstream's time to answer once the request's
body has been sent (at once for a request without one), and, while the
body is sent, the longest the upstream may go without taking any of it:
a large upload to a slow reader is not cut off while it is being taken.
Driven on a L{Clock}: the forwarder with an upstream client whose
connection the test paces.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from agw.config import Policies, RouteType
from agw.http import AnswerDeadlines, HTTPForwarder, HTTPOptions
from agw.metering import GatewayMetrics, RouteLabels
from agw.routing import BackendTarget, RouteContext

TIMEOUT = 30.0


class SlowReadingUpstream:
    """
    An upstream client whose connection takes the body one write at a
    time, when the test says (L{take}: the producer is paused after each
    write, as a full connection pauses it), and which never answers.
    """

    options = HTTPOptions(response_timeout=TIMEOUT)

    def __init__(self) -> None:
        self.body: Any = None
        self.pending: Deferred[Any] = Deferred(lambda d: d.errback(CancelledError()))
        self.written: list[bytes] = []
        self._next: Deferred[None] | None = None

    def request(self, method: bytes, url: str, headers: Any, body: Any, target: Any = None) -> Deferred[Any]:
        self.body = body
        if body is not None:
            self.sent = body.startProducing(self)
            body.pauseProducing()  # the connection takes nothing yet
        return self.pending

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.body.pauseProducing()
        if self._next is not None:
            self._next, taken = None, self._next
            taken.callback(None)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The body producer writes on its own."""

    def unregisterProducer(self) -> None:
        """Done."""

    def take(self) -> Deferred[None]:
        """Take one more write of the body; fires once written."""
        self._next = Deferred()
        self.body.resumeProducing()
        return self._next

    def take_the_rest(self) -> Deferred[None]:
        """Take what is left; fires when the whole body has been sent."""
        self.write = self.written.append  # type: ignore[method-assign]  # no more pausing
        self.body.resumeProducing()
        return self.sent


class UpstreamTimeoutTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = SlowReadingUpstream()
        context = RouteContext(
            self.clock, BackendTarget("upstream.test", 80, False), Policies(), GatewayMetrics(), RouteLabels.of(3000, "l", "r"),
        )
        self.forwarder = HTTPForwarder(RouteType.PASSTHROUGH, self.client, context)  # type: ignore[arg-type]

    def request(self, body: bytes) -> DummyRequest:  # type: ignore[override]
        request = DummyRequest([b"v1", b"files"])
        request.method, request.uri, request.path = b"POST", b"/v1/files", b"/v1/files"
        request.content = io.BytesIO(body)
        self.forwarder.render(request)
        return request

    @inlineCallbacks
    def test_an_upload_the_upstream_keeps_taking_is_not_cut_off(self) -> Any:
        """Three timeouts' worth of upload, the upstream taking some of it within each: then the upstream's time to answer."""
        request = self.request(b"x" * 200_000)
        for _ in range(2):
            self.clock.advance(TIMEOUT - 1)
            yield self.client.take()
        self.clock.advance(TIMEOUT - 1)
        yield self.client.take_the_rest()
        self.assertEqual(len(b"".join(self.client.written)), 200_000)
        self.clock.advance(TIMEOUT - 1)
        self.assertFalse(self.client.pending.called)  # 4 timeouts in all, and no 504 yet
        self.clock.advance(2)
        self.assertEqual(request.responseCode, 504)

    def test_an_upstream_that_takes_none_of_the_body_times_out(self) -> None:
        request = self.request(b"x" * 200_000)
        self.clock.advance(TIMEOUT + 1)
        self.assertEqual(request.responseCode, 504)

    def test_without_a_body_the_clock_starts_at_once(self) -> None:
        request = self.request(b"")
        self.clock.advance(TIMEOUT + 1)
        self.assertEqual(request.responseCode, 504)



class SharedDeadlineTests(TestCase):
    """The deadlines of requests sent whole run on one timer, and each still expires at its own time."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = AnswerDeadlines(self.clock, TIMEOUT)

    def watched(self) -> tuple[Any, Deferred[Any]]:
        pending: Deferred[Any] = Deferred(lambda d: d.errback(CancelledError()))
        pending.addErrback(lambda failure: failure.trap(CancelledError))
        deadline = self.deadlines.start()
        deadline.watch(pending)
        return deadline, pending

    def test_each_expires_at_its_own_time(self) -> None:
        first, _ = self.watched()
        self.clock.advance(1)
        second, _ = self.watched()
        self.clock.advance(1)
        third, _ = self.watched()
        second.stop()  # its answer came
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(TIMEOUT - 2)
        self.assertEqual([first.timed_out, second.timed_out, third.timed_out], [True, False, False])
        self.clock.advance(1.5)
        self.assertFalse(third.timed_out)
        self.clock.advance(0.5)
        self.assertEqual([first.timed_out, second.timed_out, third.timed_out], [True, False, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timer_outlives_the_requests(self) -> None:
        deadlines = [self.watched()[0] for _ in range(3)]
        for deadline in deadlines:
            deadline.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(TIMEOUT * 2)
        self.assertEqual([deadline.timed_out for deadline in deadlines], [False] * 3)

    def test_a_body_being_sent_moves_its_deadline(self) -> None:
        sending, _ = self.watched()
        waiting, _ = self.watched()
        self.clock.advance(TIMEOUT - 1)
        sending.progress()  # the upstream took a piece of its body: TIMEOUT more from now
        self.clock.advance(1)
        self.assertEqual([sending.timed_out, waiting.timed_out], [False, True])
        self.clock.advance(TIMEOUT - 1.5)
        self.assertFalse(sending.timed_out)
        self.clock.advance(1)
        self.assertTrue(sending.timed_out)

    def test_a_request_started_by_an_expiry_keeps_the_order(self) -> None:
        # A timed-out request answered at once may let the next one start (a pipelined request, say).
        started: list[Any] = []
        first, pending = self.watched()
        pending.addBoth(lambda _: started.append(self.watched()[0]))
        self.clock.advance(1)
        second, _ = self.watched()
        self.clock.advance(TIMEOUT - 1)
        self.assertEqual([first.timed_out, second.timed_out, len(started)], [True, False, 1])
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [TIMEOUT + 1])
        self.clock.advance(1)
        self.assertTrue(second.timed_out)
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [2 * TIMEOUT])
        self.clock.advance(TIMEOUT - 1)
        self.assertTrue(started[0].timed_out)
        self.assertEqual(self.clock.getDelayedCalls(), [])
