"""
Which relay connections are still open, so that stopping the gateway can
wait for every leg to be gone instead of leaving sockets behind.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class ConnectionTracker:
    """A set of live connections that can tell when it becomes empty."""

    def __init__(self) -> None:
        self._live: set[Any] = set()
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Any:
        return iter(list(self._live))

    def add(self, connection: Any) -> None:
        self._live.add(connection)

    def discard(self, connection: Any) -> None:
        self._live.discard(connection)
        if not self._live:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def when_empty(self, reactor: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Fires when no connection is left; after C{timeout} the stragglers
        are aborted (their peers did not finish the close handshake).
        """
        if not self._live:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)

        def abort() -> None:
            for connection in list(self._live):
                connection.transport.abortConnection()

        call = reactor.callLater(timeout, abort)
        return d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
