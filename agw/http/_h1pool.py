"""
agw's upstream HTTP/1.1 client: L{H1Pool} sends each request over an
idle keep-alive connection to its origin (scheme, host, port and TLS
settings) when it has one, else over a new one (L{agw.http._h1client}).
It replaces Twisted's C{Agent}, which spent about 200 µs of CPU on each
forwarded request (URI parsing, C{Headers}, a dozen Deferreds, a timer).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IBodyProducer, IResponse

from agw.http._h1client import H1Connection
from agw.http._h1request import PendingCall, request_head

class Origin:
    """Where a URL's requests go: C{scheme}, C{host} (bytes) and C{port}, as C{TargetEndpoints} reads a URI."""

    __slots__ = ("scheme", "host", "port", "authority")

    def __init__(self, scheme: bytes, host: bytes, port: int, authority: bytes) -> None:
        self.scheme, self.host, self.port, self.authority = scheme, host, port, authority

    @classmethod
    def parse(cls, prefix: str) -> Origin:
        """The origin of C{prefix} (C{scheme://authority}); L{SchemeNotSupported} unless http or https."""
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https"):
            raise SchemeNotSupported(f"unsupported scheme: {parts.scheme!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        authority = parts.netloc.rpartition("@")[2]
        return cls(parts.scheme.encode("ascii"), (parts.hostname or "").encode("idna"), port, authority.encode("idna"))


class _Connecting(Factory):
    noisy = False  # no "Starting factory" line per upstream connection

    def __init__(self, pool: H1Pool, key: Any) -> None:
        self._pool, self._key = pool, key

    def buildProtocol(self, addr: Any) -> H1Connection:  # noqa: N802
        return H1Connection(self._pool, self._key)


class H1Pool:
    """
    Upstream connections by origin and TLS settings (two routes to one
    host:port with different trust must not share one), at most
    C{max_idle} idle ones kept per origin. C{endpoints(tls)} gives the
    C{TargetEndpoints} of one TLS setting (connect timeout, trust root,
    verified name). A request that finds a pooled connection closed
    before any response byte is sent again on a new one, once, if it is
    safe to (idempotent, no body, not cancelled); else it fails with
    C{ResponseNeverReceived}, as Twisted's client does. A connection idle
    longer than C{max_idle_age} (C{clock}'s seconds) is not used again.
    """

    log = Logger()
    # Distinct URL prefixes: those of configured targets; this bounds a misuse.
    max_origins = 1024
    # Twisted's pool closes connections idle this long (cachedConnectionTimeout): a NAT or load balancer
    # may forget an idle flow without a word, and a request sent on it would hang. Checked when one is
    # taken, not with a timer per connection.
    max_idle_age = 240.0

    def __init__(self, max_idle: int, endpoints: Any, clock: Any) -> None:
        self._max_idle = max_idle
        self._endpoints = endpoints
        self._clock = clock
        self._idle: dict[Any, list[H1Connection]] = {}
        self._origins: dict[str, Origin] = {}

    def request(
        self, method: bytes, url: str, headers: Any, body: IBodyProducer | None, tls: Any = None,
    ) -> Deferred[IResponse]:
        """Send one request; fires with its response once its head is read (L{H1Response})."""
        slash = url.find("/", url.find("://") + 3)
        prefix, path = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        try:
            origin = self._origins.get(prefix)
            if origin is None:
                origin = self._origin(prefix)
            head = request_head(method, path.encode("ascii"), headers, body, origin.authority)
        except Exception:
            return fail()
        call = PendingCall((origin.scheme, origin.host, origin.port, tls), origin, tls, head, body, method)
        idle = self._idle.get(call.key)
        if idle:
            oldest = self._clock.seconds() - self.max_idle_age
            while idle:
                conn = idle.pop()
                if conn.idle_since < oldest:
                    conn.close()
                elif not conn.dead:
                    conn.reused = True
                    conn.send(call)
                    return call.deferred
        self._connect(call)
        return call.deferred

    def _origin(self, prefix: str) -> Origin:
        if len(self._origins) >= self.max_origins:
            self._origins.clear()
        origin = self._origins[prefix] = Origin.parse(prefix)
        return origin

    def _connect(self, call: PendingCall) -> None:
        try:
            endpoint = self._endpoints(call.tls).endpointForURI(call.origin)
            connecting = call.connecting = endpoint.connect(_Connecting(self, call.key))
        except Exception:
            call.deferred.errback(Failure())
            return

        def connected(conn: H1Connection) -> None:
            call.connecting = None
            if call.cancelled:  # cancelled meanwhile (a cancelled connecting fails instead; a race)
                conn.abort()
                return
            conn.send(call)

        def failed(reason: Failure) -> None:
            call.connecting = None
            if not call.cancelled:  # the caller learns why (refused, DNS, timeout); a cancelled one, CancelledError
                call.deferred.errback(reason)

        connecting.addCallbacks(connected, failed)

    def retry(self, call: PendingCall) -> None:
        """C{call}'s pooled connection closed before it answered: once more, on a new connection."""
        call.retryable = False
        call.conn = None
        self._connect(call)

    def put(self, conn: H1Connection) -> None:
        """An idle connection the upstream keeps open: kept for the next request to its origin, if there is room."""
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = self._clock.seconds()
        idle.append(conn)

    def lost(self, conn: H1Connection) -> None:
        """An idle connection closed (by the upstream, mostly): no longer offered."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def drop(self, tls: Any) -> None:
        """Close the idle connections of TLS settings no longer used (a reload replaced them)."""
        for key in [key for key in self._idle if key[3] == tls]:
            for conn in self._idle.pop(key):
                conn.close()

    def close(self) -> Deferred[None]:
        """Close every idle connection; fires when they are closed."""
        idle, self._idle = self._idle, {}
        closing = [conn.close() for conns in idle.values() for conn in conns]
        return DeferredList(closing).addCallback(lambda _: None)
