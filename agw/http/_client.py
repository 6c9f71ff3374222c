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
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, ContentDecoderAgent, GzipDecoder, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from agw.config import MiB
from agw.routing import BackendTarget


@frozen
class HTTPOptions:
    """Limits and timeouts of HTTP forwarding."""

    # Upstream silent (no response headers) this long: 504.
    response_timeout: float = 300.0
    connect_timeout: float = 10.0
    # Bodies the gateway must read (completions, embeddings, responses).
    max_json_body: int = 32 * MiB
    # Any request body (passthrough uploads: OpenAI takes files up to 512 MB).
    max_request_body: int = 512 * MiB
    # Request bodies one listener holds at once (memory and temporary files).
    max_buffered_bodies: int = 2048 * MiB
    # A response body (an SSE stream, say) silent this long is cut off.
    body_idle_timeout: float = 300.0
    max_persistent_per_host: int = 32


@implementer(IPolicyForHTTPS)
class TargetTLSPolicy:
    """
    TLS for the agent's HTTPS connections: a registered backend's own
    (its C{backendTLS} trust root and name), else verified against the
    system's roots for the host's own name.
    """

    def __init__(self) -> None:
        self._targets: dict[tuple[str, int], BackendTarget] = {}

    def register(self, target: BackendTarget) -> None:
        """Use C{target}'s TLS settings for connections to its host and port."""
        self._targets[(target.host, target.port)] = target

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        host = hostname.decode("ascii")
        target = self._targets.get((host, port))
        return target.client_tls_options() if target is not None else optionsForClientTLS(host)


class UpstreamClient:
    """Sends forwarded requests; one per gateway, sharing one pool."""

    def __init__(self, reactor: Any, options: HTTPOptions = HTTPOptions()) -> None:
        self.options = options
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = options.max_persistent_per_host
        # A POST that failed on a reused connection must not be sent twice.
        self.pool.retryAutomatically = False
        self.tls = TargetTLSPolicy()
        agent = Agent(reactor, contextFactory=self.tls, connectTimeout=options.connect_timeout, pool=self.pool)
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
