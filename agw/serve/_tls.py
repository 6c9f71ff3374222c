"""
TLS on listeners (agentgateway's C{protocol: HTTPS}, C{tls: {cert, key}}):
the certificates read from their PEM files and checked, each listener's
OpenSSL context, and L{BindTLS}, which gives a bind's new connections the
certificate their server name (SNI) asks for.

The contexts are built here rather than by Twisted's C{CertificateOptions}:
a TLS 1.3 cipher suite list must be set before a context is first used,
which C{CertificateOptions} does on creation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from agw.config import Bind, GatewayConfig, ServerTLS, TLSVersion

# Offered over ALPN: agw serves HTTP/1.1 (Realtime's WebSocket upgrade needs it), never h2.
ALPN_PROTOCOL = b"http/1.1"
_VERSIONS = {TLSVersion.TLS_V1_2: SSL.TLS1_2_VERSION, TLSVersion.TLS_V1_3: SSL.TLS1_3_VERSION}
# No compression (CRIME), the server's cipher order, no renegotiation (a
# client could make the server work for free), no session tickets (their
# key would outlive each session's forward secrecy).
_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET


class ListenerTLSError(Exception):
    """A listener's certificate or key cannot be served: C{path} (as the config names it) and why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def load_identity(tls: ServerTLS) -> tuple[list[x509.Certificate], Any]:
    """
    The certificate chain (leaf first) and private key of C{tls}; raises
    C{ValueError} with a reason: a file that cannot be read, holds no PEM
    certificate or key, an encrypted key, or a key that is not the
    certificate's.
    """
    cert_pem, key_pem = _read(tls.cert, "certificate file"), _read(tls.key, "key file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"no PEM certificate in {tls.cert}") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(f"the key in {tls.key} is encrypted (agw reads unencrypted PEM keys)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"no PEM private key in {tls.key}") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise ValueError(f"the key in {tls.key} does not match the certificate in {tls.cert}")
    return chain, key


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    return ALPN_PROTOCOL if ALPN_PROTOCOL in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def server_context(tls: ServerTLS) -> SSL.Context:
    """
    An OpenSSL context serving C{tls}'s certificate: its versions (TLS 1.2
    and 1.3 by default, never older) and cipher suites (ECDHE and AEAD
    only), ALPN C{http/1.1}. Raises C{ValueError} (see L{load_identity}).
    """
    chain, key = load_identity(tls)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    versions = tls.versions if tls.tls12_suites else tuple(v for v in tls.versions if v is TLSVersion.TLS_V1_3)
    context.set_min_proto_version(_VERSIONS[versions[0]])
    context.set_max_proto_version(_VERSIONS[versions[-1]])
    context.set_options(_OPTIONS)
    context.use_certificate(chain[0])
    context.use_privatekey(key)
    for certificate in chain[1:]:
        context.add_extra_chain_cert(certificate)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_alpn_select_callback(_select_http11)
    context.set_tls13_ciphersuites(":".join(tls.tls13_suites).encode("ascii"))
    if tls.tls12_suites:
        context.set_cipher_list(":".join(tls.tls12_suites).encode("ascii"))  # last: it may use the context
    return context


def _host_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@implementer(IOpenSSLServerConnectionCreator)
class BindTLS:
    """
    The certificates of one HTTPS bind, one per listener. A connection's
    server name picks one as agentgateway does: a listener whose
    C{hostname} is that name, else the longest wildcard that matches, else
    a listener without C{hostname}; with none, the handshake is refused.
    A connection keeps the context it started with: a reload that brings
    new certificates changes only later connections.
    """

    log = Logger()

    def __init__(self, label: str, listeners: Sequence[tuple[str | None, SSL.Context]]) -> None:
        self.label = label
        self._listeners = list(listeners)
        self._entry = self._listeners[0][1]
        self._entry.set_tlsext_servername_callback(self._server_name)

    def context_for(self, name: str) -> SSL.Context | None:
        """The context of the listener serving server name C{name} (C{""}: none sent), if any."""
        name = name.lower()
        exact = [context for hostname, context in self._listeners if hostname is not None and hostname.lower() == name]
        wildcards = sorted(
            ((len(hostname), context) for hostname, context in self._listeners
             if hostname is not None and hostname.startswith("*.") and _host_matches(hostname.lower(), name)),
            key=lambda found: -found[0],
        )
        default = [context for hostname, context in self._listeners if hostname is None]
        found = exact or [context for _, context in wildcards] or default
        return found[0] if found else None

    def _server_name(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else ""
        context = self.context_for(name)
        if context is None:
            self.log.info("{label}: TLS handshake refused: no HTTPS listener for server name {name!r}", label=self.label, name=name[:253])
            connection.get_app_data().abortConnection()
        elif context is not self._entry:
            connection.set_context(context)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        """A new server connection (L{IOpenSSLServerConnectionCreator})."""
        return SSL.Connection(self._entry, None)


def bind_tls(bind: Bind, path: str) -> BindTLS | None:
    """
    The certificates of C{bind} (at C{path}, e.g. C{binds[0]}), read now;
    C{None} for an HTTP bind. Raises L{ListenerTLSError}.
    """
    listeners = []
    for index, listener in enumerate(bind.listeners):
        if listener.tls is None:
            continue
        try:
            listeners.append((listener.hostname, server_context(listener.tls)))
        except (ValueError, SSL.Error) as e:
            raise ListenerTLSError(f"{path}.listeners[{index}].tls", str(e)) from None
    return BindTLS(f"bind/{bind.port}", listeners) if listeners else None


def tls_by_port(config: GatewayConfig) -> dict[int, BindTLS | None]:
    """Every bind's certificates (L{bind_tls}), read now, by port; raises L{ListenerTLSError}."""
    return {bind.port: bind_tls(bind, f"binds[{index}]") for index, bind in enumerate(config.binds)}
