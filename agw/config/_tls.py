"""
TLS on a listener as agentgateway configures it (C{protocol: HTTPS} with
C{tls: {cert, key}}): field names, versions and cipher suite names follow
agentgateway's C{LocalTLSServerConfig} (C{crates/agentgateway/src/types/local.rs})
and C{transport/tls.rs}. The files are read and checked by L{agw.serve}.
"""

from __future__ import annotations

from enum import Enum

from attrs import frozen


class TLSVersion(str, Enum):
    """C{minTLSVersion}/C{maxTLSVersion}: agentgateway serves TLS 1.2 and 1.3 only, and so does agw."""

    TLS_V1_2 = "TLS_V1_2"
    TLS_V1_3 = "TLS_V1_3"


# agentgateway's cipher suites (rustls's modern set: ECDHE key exchange and
# AEAD ciphers only), in its order: IANA name -> OpenSSL's name. The TLS 1.3
# suites have the same name in both.
TLS13_SUITES: dict[str, str] = {
    "TLS_AES_256_GCM_SHA384": "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
}
TLS12_SUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# The other spellings agentgateway accepts for the same suites (its serde aliases).
SUITE_ALIASES: dict[str, str] = {
    **{"TLS13_" + name.removeprefix("TLS_"): name for name in TLS13_SUITES},
    **{openssl: name for name, openssl in TLS12_SUITES.items()},
}


@frozen
class ServerTLS:
    """
    A listener's C{tls}: the certificate chain (C{cert}, a PEM file, leaf
    first) and its private key (C{key}, an unencrypted PEM file), the
    protocol versions offered, and C{cipher_suites} (IANA names, in order
    of preference; empty: all of L{TLS13_SUITES} and L{TLS12_SUITES}).
    """

    cert: str
    key: str
    min_version: TLSVersion = TLSVersion.TLS_V1_2
    max_version: TLSVersion = TLSVersion.TLS_V1_3
    cipher_suites: tuple[str, ...] = ()

    @property
    def versions(self) -> tuple[TLSVersion, ...]:
        """The versions offered, oldest first."""
        return tuple(v for v in TLSVersion if self.min_version <= v <= self.max_version)

    @property
    def tls13_suites(self) -> tuple[str, ...]:
        """OpenSSL's names of the TLS 1.3 suites offered, in order."""
        chosen = self.cipher_suites or tuple(TLS13_SUITES)
        return tuple(TLS13_SUITES[name] for name in chosen if name in TLS13_SUITES)

    @property
    def tls12_suites(self) -> tuple[str, ...]:
        """OpenSSL's names of the TLS 1.2 suites offered, in order."""
        chosen = self.cipher_suites or tuple(TLS12_SUITES)
        return tuple(TLS12_SUITES[name] for name in chosen if name in TLS12_SUITES)

    @property
    def handshake_settings(self) -> tuple[object, ...]:
        """What OpenSSL settles before the server name is known: listeners of one bind must agree on it."""
        return (self.min_version, self.max_version, self.tls13_suites, self.tls12_suites)
