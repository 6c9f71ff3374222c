"""
Where a backend lives: host, port, TLS and path rewriting, derived from an
C{ai:} backend's config.
"""

from __future__ import annotations

from urllib.parse import urlunsplit

from attrs import frozen
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from agw.config import AIBackend

OPENAI_HOST = "api.openai.com"
OPENAI_PORT = 443


@frozen
class BackendTarget:
    """
    An upstream: OpenAI over verified TLS by default, or C{hostOverride}
    over plain TCP. C{path_override} replaces the whole path;
    C{path_prefix} replaces the leading C{/v1}.
    """

    host: str
    port: int
    tls: bool
    path_override: str | None = None
    path_prefix: str | None = None

    @classmethod
    def from_backend(cls, backend: AIBackend) -> BackendTarget:
        if backend.host_override is None:
            host, port, tls = OPENAI_HOST, OPENAI_PORT, True
        else:
            host, _, port_text = backend.host_override.rpartition(":")
            host, port, tls = host.strip("[]"), int(port_text), False
        return cls(host, port, tls, backend.path_override, backend.path_prefix)

    @property
    def authority(self) -> str:
        """C{host[:port]} for a Host header or a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def path_for(self, path: str) -> str:
        """The upstream path for a request path (no query)."""
        if self.path_override is not None:
            return self.path_override
        if self.path_prefix is not None:
            rest = path[3:] if path == "/v1" or path.startswith("/v1/") else path
            return self.path_prefix.rstrip("/") + rest
        return path

    def url(self, path: str, query: str, websocket: bool = False) -> str:
        """
        The absolute upstream URL for a normalised request path and raw
        query (see L{agw.request_target}). Scheme, host and port come from
        the config alone; the request supplies only path and query.
        """
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError("not an origin-form path")  # routing refuses these; never glue one on
        scheme = ("wss" if self.tls else "ws") if websocket else ("https" if self.tls else "http")
        return urlunsplit((scheme, self.authority, self.path_for(path), query, ""))

    def endpoint(self, reactor: IReactorTCP, timeout: float) -> IStreamClientEndpoint:
        """A client endpoint for this backend, TLS-verified when C{tls}."""
        endpoint: IStreamClientEndpoint
        if isIPAddress(self.host):
            # No name to resolve: skip the resolver's thread hop.
            endpoint = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        elif isIPv6Address(self.host):
            endpoint = TCP6ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint
