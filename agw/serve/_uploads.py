"""
What uploads may hold of a listener: L{BodyBudget}, the bytes of bodies
one site holds at once (counted as they arrive, not as announced), and
L{UploadPace}, the minimum rate one upload must keep to go on holding them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class BodyBudget:
    """
    Bytes of request bodies one site holds at once. twisted.web keeps a
    body (in memory, or in a temporary file past 100 KB) until the request
    is answered; without a budget, many concurrent uploads could fill the
    disk however small each one is. Bodies take from it as their bytes
    arrive: a length announced and never sent holds nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold C{size} more bytes; C{False} if that would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class UploadPace:
    """
    The minimum rate of one upload, as Apache's mod_reqtimeout (C{MinRate}):
    C{grace} seconds from its start, plus a second for each C{rate} bytes
    that arrived (C{received}, kept up to date by the caller). Past that,
    C{too_slow} is called, once. One timer per upload, set again only when
    it fires early.
    """

    def __init__(self, clock: IReactorTime, grace: float, rate: int, too_slow: Callable[[], None]) -> None:
        self._clock, self._rate, self._too_slow = clock, rate, too_slow
        self._start = clock.seconds() + grace
        self.received = 0
        self._timer: IDelayedCall | None = clock.callLater(grace, self._check)

    def _check(self) -> None:
        deadline = self._start + self.received / self._rate
        now = self._clock.seconds()
        if now < deadline:
            self._timer = self._clock.callLater(deadline - now, self._check)
            return
        self._timer = None
        self._too_slow()

    def stop(self) -> None:
        """The upload is over (complete, refused, or its connection gone)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
