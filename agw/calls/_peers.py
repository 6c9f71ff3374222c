"""
The other processes of a gateway, as a process's calls see them. With
C{--workers N}, each call is supervised by the worker that made it; the
pool (L{agw.serve}) keeps a directory of every call, so that an incoming
SIP call is taken once whichever worker its webhook reaches, a hang-up is
carried out by the call's worker whichever worker it reaches, and the calls
of a worker that died are adopted by another one. One process alone has no
peers (L{NO_PEERS}).
"""

from __future__ import annotations

from typing import Any, Protocol

from attrs import asdict, frozen
from twisted.internet.defer import Deferred, succeed

# A call's owner: its route's labels and its consumer (the key's name, else its digest; None: anonymous).
Owner = tuple[tuple[str, ...], "str | None"]


@frozen
class CallInfo:
    """
    What another process needs to supervise a call in its place: the call,
    the route that made it (labels) and its Realtime path, the model it is
    priced at, the client key of its consumer (digest; C{None}:
    anonymous) and how it came (C{webrtc}, C{sip}).
    """

    call_id: str
    route: tuple[str, ...]
    realtime_path: str
    model: str
    key_digest: str | None
    owner_name: str | None
    transport: str

    @property
    def owner(self) -> Owner:
        return (self.route, self.owner_name)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "route": list(self.route)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CallInfo:
        return cls(**{**value, "route": tuple(value["route"])})


class Peers(Protocol):
    """The gateway's other processes (see the module)."""

    def claim(self, call_id: str) -> Deferred[bool]:
        """Whether this process is the first to take C{call_id} (an incoming call is answered once)."""

    def release(self, call_id: str) -> None:
        """The claim on C{call_id} is given back (answering failed: a retry of the webhook may try again)."""

    def supervising(self, info: CallInfo) -> None:
        """This process supervises C{info}'s call from now on."""

    def ended(self, call_id: str) -> None:
        """This process's supervision of C{call_id} is over."""

    def hang_up(self, call_id: str, owner: Owner) -> Deferred[tuple[bool, int | None]]:
        """
        Have the process that supervises C{call_id} hang it up for
        C{owner}: fires with whether one does (for that owner), and the
        provider's answer to the hang-up (C{None}: none).
        """


class _NoPeers:
    """One process alone: every claim is its own, no call is elsewhere."""

    def claim(self, call_id: str) -> Deferred[bool]:
        return succeed(True)

    def release(self, call_id: str) -> None:
        pass

    def supervising(self, info: CallInfo) -> None:
        pass

    def ended(self, call_id: str) -> None:
        pass

    def hang_up(self, call_id: str, owner: Owner) -> Deferred[tuple[bool, int | None]]:
        return succeed((False, None))


NO_PEERS: Peers = _NoPeers()
