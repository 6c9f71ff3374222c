"""
L{CallRegistry}: the calls one gateway process supervises, by call id, and
the connections of their sidebands.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

from agw.metering import OPERATOR, SHUTDOWN
from agw.routing import ConnectionTracker
from agw.calls._supervisor import CallSupervisor

# Calls one process supervises at once; more are refused (503) until some end.
MAX_CALLS = 10_000


class CallRegistry:
    """The supervised calls of one gateway (across reloads: a call keeps the config it started with)."""

    def __init__(self, limit: int = MAX_CALLS) -> None:
        self.limit = limit
        self._calls: dict[str, CallSupervisor] = {}
        # Sideband connections: apart from the relays' (a drain does not wait for calls, which last).
        self.connections = ConnectionTracker()

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def full(self) -> bool:
        return len(self._calls) >= self.limit

    def add(self, supervisor: CallSupervisor) -> None:
        """Supervise C{supervisor}'s call here until its supervision is over."""
        call_id = supervisor.call_id
        self._calls[call_id] = supervisor

        def gone(result: Any) -> Any:
            if self._calls.get(call_id) is supervisor:
                del self._calls[call_id]
            return result

        supervisor.finished.addBoth(gone)

    def get(self, call_id: str | None) -> CallSupervisor | None:
        return self._calls.get(call_id) if call_id is not None else None

    def __iter__(self) -> Iterator[CallSupervisor]:
        """The calls supervised now (ending ones too, until their supervision is over)."""
        return iter(list(self._calls.values()))

    def end(self, session_id: str) -> bool:
        """
        An operator ends the call whose session is C{session_id}: as a
        budget would (L{CallSupervisor.stop}: responses in flight cancelled
        and their usage awaited, then the hang-up). C{False}: no such call here.
        """
        for supervisor in self._calls.values():
            if supervisor.session.id == session_id:
                ensureDeferred(supervisor.stop(OPERATOR))
                return True
        return False

    def stop_all(self, reactor: Any, patience: float) -> Deferred[Any]:
        """
        The gateway stops: each call is hung up (failClosed) or left to go
        on without agw (failOpen, counted as not metered whole); fires when
        every sideband is gone (those that do not close within C{patience}
        seconds are aborted).
        """
        endings = DeferredList([supervisor.finished for supervisor in self._calls.values()])
        for supervisor in list(self._calls.values()):
            ensureDeferred(supervisor.shut_down(SHUTDOWN))
        # A provider that does not take the hang-up is not waited for past the patience.
        endings.addTimeout(patience, reactor).addErrback(lambda _: None)
        return endings.addCallback(lambda _: self.connections.when_empty(reactor, patience))
