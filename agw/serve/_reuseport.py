"""
Several processes listening on one TCP port with C{SO_REUSEPORT}: the
kernel gives each listening socket its own accept queue and spreads new
connections over them by a hash of the connection's addresses, so worker
processes share the load evenly without passing connections around.
"""

from __future__ import annotations

import socket

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket, IStreamServerEndpoint
from zope.interface import implementer

BACKLOG = 511


def reuse_port_socket(interface: str, port: int) -> socket.socket:
    """
    A TCP socket with C{SO_REUSEPORT} bound to C{interface}:C{port} (IPv6
    and dual-stack when C{interface} has a colon), not listening yet. A
    bound socket that never listens keeps the port for its process without
    taking any of its connections.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortServerEndpoint:
    """A TCP server endpoint whose port other processes can listen on too."""

    def __init__(self, reactor: IReactorSocket, port: int, interface: str = "") -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface or "0.0.0.0"

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            sock = reuse_port_socket(self._interface, self._port)
        except OSError as e:
            return fail(CannotListenError(self._interface, self._port, e))
        try:
            sock.listen(BACKLOG)
            sock.setblocking(False)
            # The reactor takes a duplicate of the descriptor.
            return succeed(self._reactor.adoptStreamPort(sock.fileno(), sock.family, protocolFactory))
        except OSError as e:
            return fail(CannotListenError(self._interface, self._port, e))
        finally:
            sock.close()
