"""
A provider's or a backend's answer read whole, up to a bound
(L{read_answer}): for the calls agw itself makes (guard backends, the
provider's WebRTC endpoints), never for what it forwards.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse


class AnswerTooLarge(Exception):
    """An answer was larger than agw reads."""


class _Answer(Protocol):
    """
    Collects a response body of up to C{limit} bytes into C{done}; more
    closes the connection. C{done} fires when the body ends (after
    twisted.web has put a reusable connection back in its pool).
    """

    def __init__(self, limit: int) -> None:
        self._limit, self._parts, self._size = limit, [], 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._size > self._limit:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts = []
            self._stop()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called:
            return
        if self._size > self._limit:
            self.done.errback(AnswerTooLarge(f"answer larger than {self._limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def read_answer(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    C{response}'s body, up to C{limit} bytes (a larger one fails with
    L{AnswerTooLarge} and its connection is closed); cancelling the
    Deferred stops reading.
    """
    answer = _Answer(limit)
    response.deliverBody(answer)
    return answer.done
