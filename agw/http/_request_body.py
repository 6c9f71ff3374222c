"""
A request body already in memory, as the upstream client's body producer.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesBodyProducer:
    """
    Writes C{data} in one go when asked to produce. A JSON body the gateway
    has read (and perhaps rewritten) is at most C{max_json_body} bytes and
    in memory already; C{FileBodyProducer} would spend a cooperator turn
    and a second write on it, on every request.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: the body was written whole."""

    def resumeProducing(self) -> None:
        """Nothing to resume: the body was written whole."""

    def stopProducing(self) -> None:
        """Nothing to stop: the body was written whole."""
