"""
The reaches into twisted.web's internals: whether a request lost its
client, quiet upstream connection factories, and an upstream response's
framing headers (which Twisted's client keeps apart from its headers).
"""

from __future__ import annotations

from typing import Any

from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.http import HTTPChannel

from agw._internals._reach import Reach

WEB_REACHES = (
    Reach("twisted.web.http", "Request", "_disconnected", "request_disconnected: the client's connection is gone"),
    Reach("twisted.web.client", "HTTPConnectionPool", "_factory", "quiet_pool: no 'Starting factory' line per upstream connection"),
    Reach("twisted.web.client", "_HTTP11ClientFactory", "_quiescentCallback", "keep_connection_headers: its protocols"),
    Reach("twisted.web._newclient", "HTTP11ClientProtocol", "_parser", "keep_connection_headers: a response's framing"),
    Reach("twisted.web._newclient", "HTTPClientParser", "connHeaders", "keep_connection_headers"),
    Reach("twisted.web.http", "HTTPChannel", "_command", "request_method: a request's method while its head is read"),
    Reach("twisted.web.http", "HTTPChannel", "_path", "request_target: its target, asked before 100 Continue"),
    Reach("twisted.web.http", "HTTPChannel", "_respondToBadRequestAndDisconnect", "OwnBadRequests: twisted.web's 400s"),
)


def request_disconnected(request: Any) -> bool:
    """Whether a twisted.web request's client connection is gone (see C{Request.connectionLost})."""
    return bool(getattr(request, "_disconnected", False))


def request_method(request: Any) -> bytes:
    """The method of a twisted.web request, also before its body is in (C{request.method} is set after)."""
    return getattr(request.channel, "_command", None) or b""


def request_target(request: Any) -> bytes:
    """The raw request-target of a twisted.web request, also before its body is in (C{request.uri} is set after)."""
    return getattr(request.channel, "_path", None) or b""


class OwnBadRequests(HTTPChannel):
    """
    An C{HTTPChannel} whose answers to requests it cannot parse (a bad
    request line, header or length: a bare C{400 Bad Request} line, then
    the close) go through L{bad_request}, for a subclass to make its own.
    """

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request(getattr(self, "_command", None) or b"")

    def bad_request(self, method: bytes) -> None:
        """Answer a request (C{method}, if its line was read) this channel cannot parse, and close (Twisted's own answer)."""
        super()._respondToBadRequestAndDisconnect()


def quiet_pool(pool: Any) -> Any:
    """
    C{pool} (an C{HTTPConnectionPool}), its connections' factories quiet:
    Twisted logs "Starting factory"/"Stopping factory" for each new
    connection otherwise, two lines per upstream request at info level.
    """
    chatty = pool._factory
    pool._factory = type("Quiet" + chatty.__name__, (chatty,), {"noisy": False})
    return pool


def keep_connection_headers(pool: Any) -> Any:
    """
    C{pool}'s responses with the upstream's C{Connection}, C{Transfer-Encoding} and
    C{Content-Length} back in their C{headers} (Twisted's parser keeps them apart): the
    gateway drops what C{Connection} names, and sees a body that ends at the close.
    """
    class Protocol(HTTP11ClientProtocol):
        def request(self, request: Any) -> Any:
            finished, parser = super().request(request), self._parser  # no parser: refused (RequestNotSent)

            def keep(response: Any) -> Any:
                for name in (b"connection", b"transfer-encoding", b"content-length"):
                    if (values := parser.connHeaders.getRawHeaders(name)) and not response.headers.hasHeader(name):
                        response.headers.setRawHeaders(name, values)
                return response

            return finished.addCallback(keep) if parser is not None else finished

    build = {"buildProtocol": lambda factory, addr: Protocol(factory._quiescentCallback)}
    pool._factory = type("Framed" + pool._factory.__name__, (pool._factory,), build)
    return pool
