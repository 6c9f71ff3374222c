"""
L{AudioStream}: the fake's C{test.stream}, a message sent over and over
under flow control.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class AudioStream:
    """
    Sends one message over and over until C{total} bytes are out, as fast
    as the connection takes them and no faster: the fake never buffers
    what its peer does not read.
    """

    def __init__(self, protocol: Any, message: bytes, total: int) -> None:
        self._protocol = protocol
        self._message = message
        self._remaining = total
        self._paused = False

    def start(self) -> None:
        # twisted.web's HTTPChannel is still registered on a taken-over transport.
        self._protocol.transport.unregisterProducer()
        self._protocol.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        fake = self._protocol.factory.fake
        while not self._paused and self._remaining > 0 and self._protocol.state == self._protocol.STATE_OPEN:
            self._protocol.sendMessage(self._message)
            self._remaining -= len(self._message)
            fake.streamed += len(self._message)
        if self._remaining <= 0:
            self._protocol.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._remaining = 0
