"""
Reactor timers for Autobahn factories.

Autobahn schedules its handshake, ping and close timeouts on a txaio
"batched timer" bound to the global reactor. Cancelling a batched call
leaves the bucket's DelayedCall pending (up to the ping interval), and it
cannot be driven by a test Clock. agw gives each factory plain
C{reactor.callLater} timers instead: cancelled means gone, and the reactor
that is passed in (real or fake) is the one that counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ReactorTimer:
    """The part of txaio's batched timer interface Autobahn uses."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._reactor.callLater(delay, func, *args, **kwargs)


def use_reactor_timers(factory: Any, reactor: IReactorTime) -> None:
    """Make an Autobahn factory's protocols time out on C{reactor}."""
    # _batched_timer is Autobahn's private attribute; every timeout in
    # autobahn.websocket.protocol goes through it (checked for 24.x-26.x).
    factory._batched_timer = ReactorTimer(reactor)


def cancel_leftover_timers(protocol: Any) -> None:
    """
    Call from C{connectionLost}: Autobahn leaves its close-handshake timeout
    pending when the connection ends before the peer's close frame arrives.
    """
    for name in ("closeHandshakeTimeoutCall", "openHandshakeTimeoutCall", "serverConnectionDropTimeoutCall"):
        call = getattr(protocol, name, None)
        if call is not None and call.active():
            call.cancel()
        setattr(protocol, name, None)
