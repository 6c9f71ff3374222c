"""
What is still open (relay connections, in-flight HTTP requests), so that
stopping the gateway can wait for it instead of cutting it off.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class ConnectionTracker:
    """
    A set of live things with a C{transport} (protocols, twisted.web
    requests) that can tell when it becomes empty.
    """

    def __init__(self) -> None:
        self._live: set[Any] = set()
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._live)

    def add(self, connection: Any) -> None:
        self._live.add(connection)

    def discard(self, connection: Any) -> None:
        self._live.discard(connection)
        if not self._live:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def wait_empty(self, reactor: IReactorTime, timeout: float) -> Deferred[bool]:
        """Fires with C{True} once empty, or C{False} after C{timeout} seconds."""
        if not self._live:
            return succeed(True)
        emptied: Deferred[None] = Deferred()
        self._waiting.append(emptied)
        result: Deferred[bool] = Deferred()

        def timed_out() -> None:
            if emptied in self._waiting:
                self._waiting.remove(emptied)
            result.callback(False)

        call = reactor.callLater(timeout, timed_out)

        def done(_: None) -> None:
            if call.active():
                call.cancel()
                result.callback(True)

        emptied.addCallback(done)
        return result

    def abort_all(self) -> None:
        """Drop every live connection at once."""
        for connection in list(self._live):
            connection.transport.abortConnection()

    def when_empty(self, reactor: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Fires when nothing is left; after C{timeout} the stragglers are
        aborted (peers that did not finish a close handshake in time).
        """

        def stragglers(emptied: bool) -> Deferred[bool] | None:
            if emptied:
                return None
            self.abort_all()
            # Aborting is immediate, but connectionLost runs on the next turn.
            return self.wait_empty(reactor, 1.0)

        return self.wait_empty(reactor, timeout).addCallback(stragglers).addCallback(lambda _: None)
