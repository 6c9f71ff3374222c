"""
The gateway's one HTTP client: agw's own HTTP/1.1 client
(L{agw.http._h1pool}) over keep-alive connections, decoding gzip, with no
cookie jar and no redirects; or, with C{legacy}, Twisted's C{Agent} over
a persistent connection pool, as before it.

Plain C{Agent} rather than treq: of what treq adds to it per request, a
gateway must switch off the cookie jar (one client's upstream cookies would
reach the next) and the redirect handling, and needs neither its buffering
nor its body encoders; what is left, gzip decoding, is Twisted's own
C{ContentDecoderAgent}, built once instead of per request. treq stays the
HTTP client of the test suite and the benchmarks.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import URI, Agent, ContentDecoderAgent, GzipDecoder, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from agw._internals import keep_connection_headers, quiet_pool
from agw.config import MiB
from agw.http._h1pool import H1Pool
from agw.routing import BackendTarget, HeaderList


@frozen
class HTTPOptions:
    """Limits and timeouts of HTTP forwarding."""

    # Upstream silent (no response headers) this long: 504.
    response_timeout: float = 300.0
    connect_timeout: float = 10.0
    # Bodies the gateway must read (completions, embeddings, responses); a
    # response body over it is metered from its ends instead of kept whole.
    max_json_body: int = 32 * MiB
    # Bodies it reads larger than this are decoded in a thread: a 32 MiB
    # json.loads takes the reactor a quarter of a second; a small one costs
    # less than the hop to a thread.
    json_thread_threshold: int = 1 * MiB
    # Any request body (passthrough uploads: OpenAI takes files up to 512 MB).
    max_request_body: int = 512 * MiB
    # Request bodies one listener holds at once (memory and temporary files).
    max_buffered_bodies: int = 2048 * MiB
    # A response body (an SSE stream, say) silent this long is cut off.
    body_idle_timeout: float = 300.0
    max_persistent_per_host: int = 32
    # An upload must keep arriving: after upload_grace seconds, each second
    # needs upload_min_rate more bytes (as Apache's mod_reqtimeout MinRate),
    # else 408. A body holds a bind's budget while it arrives; a client
    # sending a byte now and then would hold it for ever. 0: no minimum.
    upload_min_rate: int = 1024
    upload_grace: float = 20.0
    # A client that leaves mid-answer: the answer is still awaited and read (nothing sent) this long for its
    # usage, which the provider bills all the same (--cancel-grace, as a Realtime response's).
    usage_grace: float = 5.0
    # twisted.web's server and Agent instead of agw's own front door and client (--legacy-http): the bench compares them.
    legacy_http: bool = False


# A lane's TLS: (the name to verify, the PEM trust root); None stands for
# the defaults: the system's roots, each URL's own host.
TLSSettings = tuple[str | None, bytes | None]


def tls_settings(target: BackendTarget | None) -> TLSSettings | None:
    """The TLS settings C{target}'s requests need their own connections for (C{None}: the defaults)."""
    if target is None or not target.tls or (target.tls_hostname is None and target.trust_root is None):
        return None
    return (target.tls_hostname, target.trust_root)


@implementer(IAgentEndpointFactory)
class TargetEndpoints:
    """
    Where one lane's agent connects, one endpoint per scheme, host and
    port, made once: Agent's own factory builds a C{HostnameEndpoint}
    (IDNA-encoding the host) and a TLS policy for every request, even one
    that then goes over a pooled connection. The host is still resolved
    on each new connection, so DNS changes are followed.

    TLS is verified for C{tls}'s name (else the host's) against its trust
    root (else the system's roots).
    """

    # The hosts are those of configured targets; this only bounds a
    # misuse (an embedder sending to arbitrary URLs).
    max_endpoints = 1024

    def __init__(
        self, reactor: Any, connect_timeout: float, tls: TLSSettings | None = None,
    ) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= self.max_endpoints:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._endpoint(uri)
        return endpoint

    def _endpoint(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        name, root = self._tls if self._tls is not None else (None, None)
        trust = Certificate.loadPEM(root) if root is not None else None
        return wrapClientTLS(optionsForClientTLS(name or host, trustRoot=trust), endpoint)


def tls_failure(error: Exception) -> str | None:
    """The TLS error behind a failed request (twisted.web wraps them in lists of Failures), if that is what it was."""
    for failure in getattr(error, "reasons", ()):
        if failure.check(SSLError):
            return str(failure.value)
    return None


class UpstreamClient:
    """
    Sends forwarded requests; one per gateway. Requests go in lanes, one
    per distinct C{backendTLS} (trust root and name) and one for the
    defaults: two routes to one host:port with different TLS settings must
    not share a connection (one verified against one route's root would
    serve the other). agw's own client (L{H1Pool}) keys its connections by
    origin and TLS settings, each lane's endpoints its own; with
    C{legacy}, each lane is a Twisted C{Agent} with its own connection
    pool (that pool knows a connection by scheme, host and port only).
    """

    # Lanes come from the config; a reload that changes trust roots again
    # and again retires the old ones past this many.
    max_lanes = 64

    def __init__(self, reactor: Any, options: HTTPOptions = HTTPOptions(), legacy: bool | None = None) -> None:
        self.options = options
        # Twisted's Agent (--legacy-http: options.legacy_http, unless told otherwise).
        self.legacy = legacy = options.legacy_http if legacy is None else legacy
        self._reactor = reactor
        self._lanes: dict[TLSSettings | None, tuple[ContentDecoderAgent, HTTPConnectionPool]] = {}
        self._endpoints: dict[TLSSettings | None, TargetEndpoints] = {}
        if legacy:
            self.pool: HTTPConnectionPool | H1Pool = self._lane(None)[1]
        else:
            self.pool = self._h1 = H1Pool(options.max_persistent_per_host, self._target_endpoints, reactor)

    def _target_endpoints(self, tls: TLSSettings | None) -> TargetEndpoints:
        """One lane's endpoints (agw's own client): the pool keeps its connections apart by TLS settings itself."""
        endpoints = self._endpoints.get(tls)
        if endpoints is None:
            if len(self._endpoints) >= self.max_lanes:
                for key in [key for key in self._endpoints if key is not None]:
                    del self._endpoints[key]
                    self._h1.drop(key)
            endpoints = self._endpoints[tls] = TargetEndpoints(self._reactor, self.options.connect_timeout, tls)
        return endpoints

    def _lane(self, tls: TLSSettings | None) -> tuple[ContentDecoderAgent, HTTPConnectionPool]:
        lane = self._lanes.get(tls)
        if lane is not None:
            return lane
        if len(self._lanes) >= self.max_lanes:
            for key in [key for key in self._lanes if key is not None]:
                self._lanes.pop(key)[1].closeCachedConnections()
        pool = keep_connection_headers(quiet_pool(HTTPConnectionPool(self._reactor, persistent=True)))
        pool.maxPersistentPerHost = self.options.max_persistent_per_host
        # Twisted retries, once and on a new connection, a request that
        # failed on a pooled connection before any response byte came back
        # (the upstream closed it as it was reused), and only a request that
        # is safe to send twice: an idempotent method without a body, not
        # one it cancelled. Anything else becomes 502 upstream_closed.
        pool.retryAutomatically = True
        endpoints = TargetEndpoints(self._reactor, self.options.connect_timeout, tls)
        agent = Agent.usingEndpointFactory(self._reactor, endpoints, pool=pool)
        lane = self._lanes[tls] = (ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)]), pool)
        return lane

    def request(
        self, method: bytes, url: str, headers: Headers | HeaderList | list[tuple[bytes, bytes]], body: IBodyProducer | None,
        target: BackendTarget | None = None,
    ) -> Deferred[IResponse]:
        """
        Send one request (to C{target}: its TLS settings; the system's
        roots without one); fires with the (unbuffered) response headers.
        Cancelling it abandons the upstream request. C{headers}: twisted's
        C{Headers}, a L{HeaderList} or a list of byte pairs.
        """
        if not self.legacy:
            return self._h1.request(method, url, headers, body, tls_settings(target))
        if not isinstance(headers, Headers):
            pairs, headers = getattr(headers, "pairs", headers), Headers()
            for name, value in pairs:
                headers.addRawHeader(name, value)
        return self._lane(tls_settings(target))[0].request(method, url.encode("ascii"), headers, body)

    def close(self) -> Deferred[None]:
        """Close idle pooled connections (on gateway stop)."""
        if not self.legacy:
            return self._h1.close()
        return DeferredList([pool.closeCachedConnections() for _, pool in self._lanes.values()]).addCallback(lambda _: None)
