"""
The end of an Autobahn protocol's connection without leftovers: timers
Autobahn leaves pending when TCP ends first, and reference cycles that
would keep a finished session (both legs, their buffers, readers and
accounting) until the garbage collector runs instead of freeing it when it
ends:

 - Autobahn fires C{is_closed} with the protocol itself (the protocol holds
   that Deferred, which holds the protocol);
 - the HTTP protocol a WebSocket upgrade took the connection from never
   hears that its part ended, and keeps its request (twisted.web's channel
   and request hold each other; agw's front door and its parser do);
 - a Twisted TCP client connection's transport and connector hold each
   other, and so do the connector and the endpoint's wrapping factory
   (which holds the protocol's factory).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from agw._internals._reach import Reach

_PROTOCOL = ("autobahn.websocket.protocol", "WebSocketProtocol")
LIFECYCLE_REACHES = (
    Reach(*_PROTOCOL, "closeHandshakeTimeoutCall", "cancel_leftover_timers: left pending when TCP ends first"),
    Reach(*_PROTOCOL, "openHandshakeTimeoutCall", "cancel_leftover_timers"),
    Reach(*_PROTOCOL, "serverConnectionDropTimeoutCall", "cancel_leftover_timers"),
    Reach("twisted.internet.tcp", "Client", "connector", "connection_ended: a client transport's connector"),
    Reach("twisted.internet.base", "BaseConnector", "transport", "connection_ended: the connector's cycle with its transport"),
    Reach("twisted.internet.endpoints", "_WrappingFactory", "_connector", "connection_ended: its cycle with the connector"),
)


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


def _nothing(_: object) -> None:
    return None


def connection_ended(protocol: Any, reason: Failure) -> None:
    """
    Call from an Autobahn protocol's C{connectionLost}, after Autobahn's own:
    L{cancel_leftover_timers}, and the reference cycles of its connection
    broken (see above), so that it goes as soon as nothing else holds it.
    The protocol's C{is_closed} fires with C{None}, not the protocol.
    """
    cancel_leftover_timers(protocol)
    protocol.is_closed.addCallback(_nothing)  # fired already, or when Autobahn fires it
    upgrade_done(protocol, reason)  # a handshake that never completed
    transport = protocol.transport
    while isinstance(transport, ProtocolWrapper):  # TLS
        transport = transport.transport
    connector = getattr(transport, "connector", None)
    if connector is not None:
        # Neither is used once the connection is up: the connector only tells
        # its factory the connection is lost, after this returns.
        connector.transport = None
        if hasattr(connector.factory, "_connector"):
            connector.factory._connector = None


def upgrade_done(protocol: Any, reason: Failure = connectionDone) -> None:
    """
    Call from C{onOpen} of a protocol a L{DisplacingResource} made (and
    L{connection_ended} calls it): the HTTP protocol its upgrade took the
    connection from is told that its part ended, so that it and the
    upgrade's request go now, not at the end of the session.
    """
    displaced = getattr(protocol, "displaced", None)
    if displaced is not None:
        protocol.displaced = None
        displaced.connectionLost(reason)


def protocol_of(transport: Any) -> Any:
    """
    The protocol a transport delivers to, as Autobahn's C{WebSocketResource}
    finds it when it takes the transport over (a TLS wrapper's wrapped
    protocol, or the transport's own).
    """
    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    own = getattr(transport, "protocol", None)
    if isinstance(own, ProtocolWrapper):
        return own.wrappedProtocol
    return own


class DisplacingResource(WebSocketResource):
    """
    Autobahn's C{WebSocketResource}; the protocol that takes a connection
    over is given the HTTP protocol it displaced (its C{displaced}), for
    L{upgrade_done} to tell once the handshake is over.
    """

    def render(self, request: Any) -> Any:
        channel = request.channel
        transport = channel.transport
        displaced = protocol_of(transport)
        rendered = super().render(request)
        if transport is not None and channel.transport is None:  # taken over
            taker = protocol_of(transport)
            if taker is not displaced and taker is not None:
                taker.displaced = displaced
        return rendered
