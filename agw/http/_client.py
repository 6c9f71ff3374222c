"""
The gateway's one HTTP client: Twisted's C{Agent} over a persistent
connection pool, decoding gzip, with no cookie jar and no redirects.

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
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import URI, Agent, ContentDecoderAgent, GzipDecoder, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from agw._internals import quiet_pool
from agw.config import MiB
from agw.routing import BackendTarget


@frozen
class HTTPOptions:
    """Limits and timeouts of HTTP forwarding."""

    # Upstream silent (no response headers) this long: 504.
    response_timeout: float = 300.0
    connect_timeout: float = 10.0
    # Bodies the gateway must read (completions, embeddings, responses); a
    # response body over it is metered from its ends instead of kept whole.
    max_json_body: int = 32 * MiB
    # Any request body (passthrough uploads: OpenAI takes files up to 512 MB).
    max_request_body: int = 512 * MiB
    # Request bodies one listener holds at once (memory and temporary files).
    max_buffered_bodies: int = 2048 * MiB
    # A response body (an SSE stream, say) silent this long is cut off.
    body_idle_timeout: float = 300.0
    max_persistent_per_host: int = 32


@implementer(IAgentEndpointFactory)
class TargetEndpoints:
    """
    Where the agent connects, one endpoint per scheme, host and port, made
    once: Agent's own factory builds a C{HostnameEndpoint} (IDNA-encoding
    the host) and a TLS policy for every request, even one that then goes
    over a pooled connection. The host is still resolved on each new
    connection, so DNS changes are followed.

    TLS is a registered backend's own (its C{backendTLS} trust root and
    name), else verified against the system's roots for the host's name.
    """

    # The hosts are those of configured targets; this only bounds a
    # misuse (an embedder sending to arbitrary URLs).
    max_endpoints = 1024

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._targets: dict[tuple[str, int], BackendTarget] = {}
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def register(self, target: BackendTarget) -> None:
        """Use C{target}'s TLS settings for connections to its host and port."""
        self._targets[(target.host, target.port)] = target
        self._endpoints.clear()

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
        target = self._targets.get((host, uri.port))
        tls = target.client_tls_options() if target is not None else optionsForClientTLS(host)
        return wrapClientTLS(tls, endpoint)


class UpstreamClient:
    """Sends forwarded requests; one per gateway, sharing one pool."""

    def __init__(self, reactor: Any, options: HTTPOptions = HTTPOptions()) -> None:
        self.options = options
        self.pool = quiet_pool(HTTPConnectionPool(reactor, persistent=True))
        self.pool.maxPersistentPerHost = options.max_persistent_per_host
        # A POST that failed on a reused connection must not be sent twice.
        self.pool.retryAutomatically = False
        self.endpoints = TargetEndpoints(reactor, options.connect_timeout)
        agent = Agent.usingEndpointFactory(reactor, self.endpoints, pool=self.pool)
        self._agent = ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)])

    def request(self, method: bytes, url: str, headers: Headers, body: IBodyProducer | None) -> Deferred[IResponse]:
        """
        Send one request; fires with the (unbuffered) response headers.
        Cancelling it abandons the upstream request.
        """
        return self._agent.request(method, url.encode("ascii"), headers, body)

    def close(self) -> Deferred[None]:
        """Close idle pooled connections (on gateway stop)."""
        return self.pool.closeCachedConnections()
