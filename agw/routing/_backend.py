"""
Where a backend lives: host, port, TLS and path rewriting, derived from an
C{ai:} backend's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlunsplit

from attrs import field, frozen
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS

from agw.config import AIBackend, AzureProvider, BackendTLS
from agw.routing._azure import AZURE_KEY, BEARER, azure_http, azure_realtime

OPENAI_HOST = "api.openai.com"
OPENAI_PORT = 443


class TrustRootError(Exception):
    """A C{backendTLS.root} file that cannot be read or holds no certificate."""


def read_trust_root(path: str) -> bytes:
    """The PEM certificate(s) in C{path}; raises L{TrustRootError} naming the problem."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise TrustRootError(f"cannot read {path}: {e.strerror}") from None
    try:
        Certificate.loadPEM(pem)
    except Exception:
        raise TrustRootError(f"{path} holds no PEM certificate") from None
    return pem


@frozen
class BackendTarget:
    """
    An upstream: OpenAI over verified TLS by default, or C{hostOverride}
    over plain TCP (over TLS too with a C{backendTLS} policy).
    C{path_override} replaces the whole path; C{path_prefix} replaces the
    leading C{/v1}; without either, an C{azure} backend's paths are
    Azure's (L{agw.routing._azure}). C{key_header} is the header (and
    prefix) the backend key goes in. TLS verifies the certificate for C{tls_hostname} (the
    host when unset) against C{trust_root} (PEM; the system's roots when
    unset).
    """

    host: str
    port: int
    tls: bool
    path_override: str | None = None
    path_prefix: str | None = None
    tls_hostname: str | None = None
    trust_root: bytes | None = field(default=None, repr=False)
    azure: AzureProvider | None = None
    key_header: tuple[str, str] = BEARER
    model: str | None = None
    # Its client TLS options, made on first use and shared by every connection to it: each would make
    # an OpenSSL context, and hold itself in a reference cycle (its curve chooser), per connection otherwise.
    _tls_options: list[IOpenSSLClientConnectionCreator] = field(factory=list, init=False, eq=False, repr=False)

    @classmethod
    def from_backend(
        cls, backend: AIBackend, backend_tls: BackendTLS | None = None, key_header: tuple[str, str] | None = None,
        trust_roots: Mapping[str, bytes] | None = None,
    ) -> BackendTarget:
        """
        The target of C{backend} under a route's C{backendTLS} policy (its
        root file's PEM from C{trust_roots}, read already, else read now), the
        backend key in C{key_header} (C{backendAuth}'s location; by default
        Azure's C{api-key}, else C{Authorization: Bearer}).
        """
        if key_header is None:
            key_header = AZURE_KEY if backend.azure is not None else BEARER
        if backend.host_override is None:
            host, port, tls = backend.azure.host if backend.azure else OPENAI_HOST, OPENAI_PORT, True
        else:
            host, _, port_text = backend.host_override.rpartition(":")
            host, port, tls = host.strip("[]"), int(port_text), False
        hostname = root = None
        if backend_tls is not None:
            tls, hostname = True, backend_tls.hostname
            path = backend_tls.root
            root = None if path is None else trust_roots[path] if trust_roots and path in trust_roots else read_trust_root(path)
        return cls(
            host, port, tls, backend.path_override, backend.path_prefix, hostname, root, backend.azure, key_header,
            backend.model,
        )

    def client_tls_options(self) -> IOpenSSLClientConnectionCreator:
        """Client TLS for this target: verified, for C{tls_hostname} or the host."""
        if not self._tls_options:
            trust = Certificate.loadPEM(self.trust_root) if self.trust_root is not None else None
            self._tls_options.append(optionsForClientTLS(self.tls_hostname or self.host, trustRoot=trust))
        return self._tls_options[0]

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

    def url(self, path: str, query: str, websocket: bool = False, model: str | None = None) -> str:
        """
        The absolute upstream URL for a normalised request path and raw
        query (see L{agw.routing.parse_target}). Scheme, host and port come from
        the config alone; the request supplies only path and query (and, for
        an Azure deployment path, C{model}: raises L{agw.routing.NoDeployment}
        when neither it nor the config names one).
        """
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError("not an origin-form path")  # routing refuses these; never glue one on
        scheme = ("wss" if self.tls else "ws") if websocket else ("https" if self.tls else "http")
        if self.azure is not None and self.path_override is None and self.path_prefix is None:
            model = self.model or model
            if websocket:
                upstream_path, query = azure_realtime(self.azure, query, model)
            else:
                upstream_path, query = azure_http(self.azure, path, query, model)
            return urlunsplit((scheme, self.authority, upstream_path, query, ""))
        # urlunsplit's result for an absolute path, without its argument checks on every request.
        url = f"{scheme}://{self.authority}{self.path_for(path)}"
        return f"{url}?{query}" if query else url

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
            endpoint = wrapClientTLS(self.client_tls_options(), endpoint)
        return endpoint
