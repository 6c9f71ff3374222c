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


class HeldPorts:
    """
    Sockets that hold the binds' ports for a pool of workers without ever
    listening: port 0 becomes one real port every worker shares, kept across
    worker restarts. C{ports} maps each config port to the port held.
    """

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.ports: dict[int, int] = {}
        self._sockets: dict[int, socket.socket] = {}

    def __bool__(self) -> bool:
        return bool(self._sockets)

    def hold(self, ports: list[int]) -> None:
        """Hold C{ports}: all of them, or none (L{OSError} naming the bind that cannot listen)."""
        held = {}
        for port in ports:
            try:
                held[port] = reuse_port_socket(self.interface, port)
            except OSError as e:
                for sock in held.values():
                    sock.close()
                raise OSError(f"bind/{port} cannot listen on {self.interface}:{port}: {e}") from None
        for port, sock in held.items():
            self._sockets[port] = sock
            self.ports[port] = sock.getsockname()[1]

    def release(self, port: int) -> None:
        self._sockets.pop(port).close()
        del self.ports[port]

    def release_all(self) -> None:
        for port in list(self._sockets):
            self.release(port)
