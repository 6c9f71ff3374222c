"""
The upstream's time to answer (C{--upstream-timeout}), counted from when
the request's body has been sent (L{AnswerDeadline}), and the deadlines of
one upstream client kept on one reactor timer (L{AnswerDeadlines}): nearly
every answer comes in milliseconds, and a timer set and cancelled per
request is a heap insertion and a cancellation the reactor keeps for a
while, on every request.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from agw.http._request_body import BytesBodyProducer


class AnswerDeadlines:
    """
    The answer deadlines of one upstream client, each C{timeout} seconds.
    Deadlines that start when their request is sent expire in the order
    they were set, so one timer (at the first's expiry) serves them all.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock, self.timeout = clock, timeout
        # Expiry by deadline, in the order they were set: the first expires first.
        self._waiting: dict[AnswerDeadline, float] = {}
        self._call: IDelayedCall | None = None

    def start(self) -> AnswerDeadline:
        """A deadline for one request (it runs once the request is L{AnswerDeadline.watch}ed)."""
        return AnswerDeadline(self)

    def add(self, deadline: AnswerDeadline) -> None:
        """C{deadline} expires C{timeout} from now, unless it is L{remove}d first."""
        self._waiting[deadline] = self.clock.seconds() + self.timeout
        if self._call is None:
            self._call = self.clock.callLater(self.timeout, self._expire)

    def remove(self, deadline: AnswerDeadline) -> None:
        """C{deadline} no longer runs here (its answer came, or it keeps its own timer)."""
        waiting = self._waiting
        if waiting.pop(deadline, None) is not None and not waiting and self._call is not None:
            self._call.cancel()  # none left: no timer outlives the requests (a stopping reactor waits for none)
            self._call = None

    def _expire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        while self._waiting:
            deadline, expiry = next(iter(self._waiting.items()))
            if expiry > now:
                if self._call is not None:  # one set by a request an expiry started (it expires later than this)
                    self._call.cancel()
                self._call = self.clock.callLater(expiry - now, self._expire)
                return
            del self._waiting[deadline]
            deadline.expired()


class AnswerDeadline:
    """
    One request's time to answer: C{timeout} seconds after its body has
    been sent (its producer's Deferred fired: all of it written to the
    connection); while it is being sent, C{timeout} seconds without the
    upstream taking any more of it. Counted from the request, a large
    upload to a slow reader would be cut off while still being sent.
    L{watch} the request's Deferred: past the deadline it is cancelled, and
    C{timed_out} is set. While a body is written it keeps a timer of its
    own, reset by each write; otherwise it waits in its L{AnswerDeadlines}.
    """

    def __init__(self, deadlines: AnswerDeadlines) -> None:
        self._deadlines = deadlines
        self._pending: Deferred[Any] | None = None
        self._call: IDelayedCall | None = None
        self.timed_out = False

    def sending(self, body: IBodyProducer | None) -> IBodyProducer | None:
        """C{body} as sent upstream: each of its writes and its end are told to this deadline."""
        if body is None or isinstance(body, BytesBodyProducer):
            return body  # written with the request's head: sent when the request is, where the deadline starts
        return _SentBody(body, self)

    def watch(self, pending: Deferred[Any]) -> None:
        """The request's Deferred: cancelled if the deadline passes first."""
        self._pending = pending
        self._deadlines.add(self)

    def progress(self) -> None:
        """A piece of the body was written: the upstream takes it, it gets C{timeout} more."""
        if self._pending is None:
            return  # not watched yet (written as the request starts), or over
        if self._call is None:
            self._deadlines.remove(self)
            self._call = self._deadlines.clock.callLater(self._deadlines.timeout, self.expired)
        elif self._call.active():
            self._call.reset(self._deadlines.timeout)

    def sent(self, result: Any) -> Any:
        """The whole body was written: the upstream has C{timeout} from now to answer."""
        self.progress()
        return result

    def expired(self) -> None:
        """The deadline passed first: the request is cancelled."""
        pending, self._pending = self._pending, None
        self.timed_out = True
        if pending is not None:
            pending.cancel()

    def stop(self) -> None:
        """An answer (or a failure) came: no deadline any more."""
        self._deadlines.remove(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._pending = None  # the call held this deadline, which held it: no cycle left for a GC


@implementer(IConsumer)
class _Counted:
    """The connection a body is written to, telling C{deadline} of each write."""

    def __init__(self, consumer: IConsumer, deadline: AnswerDeadline) -> None:
        self._consumer, self._deadline = consumer, deadline

    def write(self, data: bytes) -> None:
        self._deadline.progress()
        self._consumer.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()


@implementer(IBodyProducer)
class _SentBody:
    """C{body}, telling C{deadline} of each write of it and of its end."""

    def __init__(self, body: IBodyProducer, deadline: AnswerDeadline) -> None:
        self._body, self._deadline = body, deadline
        self.length = body.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return self._body.startProducing(_Counted(consumer, self._deadline)).addCallback(self._deadline.sent)  # type: ignore[no-any-return]

    def pauseProducing(self) -> None:
        self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()
