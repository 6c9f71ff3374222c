"""
L{CallRegistry}: the calls one gateway process supervises, by call id, and
the connections of their sidebands; with C{--workers}, what it tells its
peers (L{agw.calls.Peers}) and answers for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger

from agw.decisions import Deliveries
from agw.metering import CLIENT, OPERATOR, SHUTDOWN
from agw.routing import ConnectionTracker
from agw.calls._peers import NO_PEERS, CallInfo, Owner, Peers
from agw.calls._supervisor import CallSupervisor

# Calls one process supervises at once; more are refused (503) until some end.
MAX_CALLS = 10_000


class CallRegistry:
    """
    The supervised calls of one gateway (across reloads: a call keeps the
    config it started with), the incoming calls being answered (claimed),
    and the webhook deliveries seen lately.
    """

    log = Logger()

    def __init__(self, limit: int = MAX_CALLS) -> None:
        self.limit = limit
        self._calls: dict[str, CallSupervisor] = {}
        self._claimed: set[str] = set()
        # Sideband connections: apart from the relays' (a drain does not wait for calls, which last).
        self.connections = ConnectionTracker()
        self.deliveries = Deliveries()  # SIP webhooks: each acted on once
        self.peers: Peers = NO_PEERS  # the pool's other workers, if any (agw.serve sets them)
        # Supervises a call another process made (it died): the gateway's (agw.serve sets it).
        self.adopter: Callable[[CallInfo], None] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def full(self) -> bool:
        return len(self._calls) + len(self._claimed) >= self.limit

    def add(self, supervisor: CallSupervisor, info: CallInfo) -> None:
        """Supervise C{supervisor}'s call here until its supervision is over (C{info}: for the peers)."""
        call_id = supervisor.call_id
        self._calls[call_id] = supervisor
        self._claimed.discard(call_id)
        self.peers.supervising(info)

        def gone(result: Any) -> Any:
            if self._calls.get(call_id) is supervisor:
                del self._calls[call_id]
                self.peers.ended(call_id)
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

    def claim(self, call_id: str) -> Deferred[bool]:
        """
        Whether this process answers incoming call C{call_id}: no other
        delivery of its webhook (here, or on another worker) took it.
        """
        if call_id in self._calls or call_id in self._claimed:
            return succeed(False)
        self._claimed.add(call_id)

        def taken(first: bool) -> bool:
            if not first:
                self._claimed.discard(call_id)
            return first

        def failed(failure: Any) -> Any:
            self._claimed.discard(call_id)
            return failure  # unknown whether another took it: not answered, so that the provider retries

        return self.peers.claim(call_id).addCallbacks(taken, failed)

    def release(self, call_id: str) -> None:
        """Answering C{call_id} failed before it was supervised: a retried webhook may try again."""
        if call_id in self._claimed:
            self._claimed.discard(call_id)
            self.peers.release(call_id)

    def hang_up_elsewhere(self, call_id: str, owner: Owner) -> Deferred[tuple[bool, int | None]]:
        """A hang-up for a call this process does not supervise: carried out by the process that does (if any)."""
        return self.peers.hang_up(call_id, owner)

    async def hang_up_here(self, call_id: str, owner: Owner) -> tuple[bool, int | None]:
        """A peer asks: hang up C{call_id} if this process supervises it for C{owner}; (found, the provider's answer)."""
        supervisor = self.get(call_id)
        if supervisor is None or supervisor.owner != owner:
            return False, None
        return True, await supervisor.stop(CLIENT)

    def adopt(self, info: CallInfo) -> None:
        """Supervise a call a process that died made (the pool asks)."""
        if info.call_id in self._calls:
            return
        if self.adopter is None:
            self.log.error("call {call}: no way to adopt it here", call=info.call_id)
            return
        try:
            self.adopter(info)
        except Exception:
            self.log.failure("call {call}: adopting it failed (its route is gone?): it goes on unsupervised", call=info.call_id)
            self.peers.ended(info.call_id)

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
