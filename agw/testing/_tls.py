"""
A throwaway certificate authority for TLS tests: a CA and a server
certificate it signed, made fresh (nothing secret ships with agw), so a
fake provider can serve TLS that a gateway verifies for real.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import CertificateOptions, PrivateCertificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hostname: str) -> tuple[bytes, bytes]:
    """A server certificate (PEM) for C{hostname} and 127.0.0.1 signed by C{ca}, valid for a day, and its key (PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(_name(hostname)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return server.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@frozen
class TestCA:
    """
    A CA (C{ca_pem}, to trust) and a server certificate and key for
    C{hostname} and 127.0.0.1. L{renewed} issues another server certificate
    from the same CA (a new serial and key), as a certificate rotation would.
    """

    __test__ = False  # not a pytest test class

    ca_pem: bytes
    server_pem: bytes
    server_key_pem: bytes
    hostname: str
    ca_key_pem: bytes = field(default=b"", repr=False)

    @classmethod
    def make(cls, hostname: str = "fake-openai.test") -> TestCA:
        """A new CA and a server certificate valid for a day."""
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder().subject_name(_name("agw test CA")).issuer_name(_name("agw test CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        server_pem, key_pem = _issue(ca, ca_key, hostname)
        return cls(ca.public_bytes(serialization.Encoding.PEM), server_pem, key_pem, hostname, _pem_key(ca_key))

    def renewed(self, hostname: str | None = None) -> TestCA:
        """The same CA with a new server certificate (new serial, new key) for C{hostname} (this one's by default)."""
        if not self.ca_key_pem:
            raise ValueError("this TestCA was made without its CA key")
        ca_key = serialization.load_pem_private_key(self.ca_key_pem, password=None)
        hostname = hostname or self.hostname
        server_pem, key_pem = _issue(x509.load_pem_x509_certificate(self.ca_pem), ca_key, hostname)  # type: ignore[arg-type]
        return TestCA(self.ca_pem, server_pem, key_pem, hostname, self.ca_key_pem)

    @property
    def serial(self) -> int:
        """The server certificate's serial number."""
        return x509.load_pem_x509_certificate(self.server_pem).serial_number

    def listener_tls(self, directory: str) -> dict[str, str]:
        """
        Write the server certificate and key into C{directory} (their names
        carry the serial) and return agentgateway's listener C{tls} for them:
        C{{"cert": path, "key": path}}.
        """
        cert, key = os.path.join(directory, f"server-{self.serial:x}.pem"), os.path.join(directory, f"server-{self.serial:x}.key")
        with open(cert, "wb") as f:
            f.write(self.server_pem)
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(self.server_key_pem)
        return {"cert": cert, "key": key}

    def server_options(self) -> CertificateOptions:
        """TLS options for a server presenting the certificate."""
        return PrivateCertificate.loadPEM(self.server_pem + self.server_key_pem).options()
