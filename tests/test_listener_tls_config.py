"""
A listener's C{protocol} and C{tls} as agentgateway writes them, and what
agw refuses with a reason: other protocols, HTTPS without tls, tls on an
HTTP listener, HTTP and HTTPS on one bind, TLS below 1.2, unknown cipher
suites; and a certificate or key that cannot be served stops the start
(and C{--validate-only}) with one line, and a reload, with the running
certificates kept.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat, load_pem_private_key
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import Gateway, parse_config
from agw.config import ConfigError, ServerTLS, TLSVersion
from agw.serve import ListenerTLSError, ReloadRefused
from agw.serve._options import check_files
from agw.testing import TestCA
from tests.support import BACKEND_KEY, REPO, TwistdAgw, listening_fake, running_gateway, wait_until
from tests.tls_support import client_context, handshake, https_config

ROUTES = [{"backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}}}]}]


def config_of(*listeners: dict[str, Any]) -> Any:
    return parse_config(yaml.safe_dump({"binds": [{"port": 3443, "listeners": list(listeners)}]}), {})


def https(**tls: Any) -> dict[str, Any]:
    return {"protocol": "HTTPS", "tls": {"cert": "cert.pem", "key": "key.pem", **tls}, "routes": ROUTES}


class ListenerConfigTests(SynchronousTestCase):
    def error(self, *listeners: dict[str, Any]) -> str:
        with self.assertRaises(ConfigError) as e:
            config_of(*listeners)
        return str(e.exception)

    def test_https_listener(self) -> None:
        listener = config_of(https(minTlsVersion="TLS_V1_3", cipherSuites=["TLS13_AES_128_GCM_SHA256"])).binds[0].listeners[0]
        self.assertEqual(listener.protocol, "HTTPS")
        self.assertEqual(listener.tls, ServerTLS("cert.pem", "key.pem", TLSVersion.TLS_V1_3, TLSVersion.TLS_V1_3, ("TLS_AES_128_GCM_SHA256",)))
        self.assertEqual(config_of(https()).binds[0].listeners[0].tls.versions, (TLSVersion.TLS_V1_2, TLSVersion.TLS_V1_3))
        self.assertIsNone(config_of({"routes": ROUTES}).binds[0].listeners[0].tls)  # HTTP, agentgateway's default

    def test_refused_with_a_reason(self) -> None:
        cases = {
            "listeners[0].protocol: protocol TCP is supported by agentgateway but not by agw yet": ({"protocol": "TCP"},),
            "listeners[0].protocol: expected HTTP or HTTPS, got 'HTTP2'": ({"protocol": "HTTP2"},),
            "listeners[0].tls: an HTTPS listener requires tls (cert and key)": ({"protocol": "HTTPS"},),
            "listeners[0].tls: tls is used only with protocol: HTTPS": ({"tls": {"cert": "c", "key": "k"}},),
            "listeners[0].tls.key: expected the path of a PEM file": ({"protocol": "HTTPS", "tls": {"cert": "c"}},),
            "listeners[1].protocol: HTTP beside HTTPS on one bind": (https(), {"routes": ROUTES}),
            "listeners[1].tls: HTTPS listeners of one bind must agree": (https(), https(maxTLSVersion="TLS_V1_2")),
            "tls.minTLSVersion: unsupported TLS version: TLS_V1_1": (https(minTLSVersion="TLS_V1_1"),),
            "tls.minTlsVersion: set minTLSVersion or minTlsVersion, not both": (https(minTLSVersion="TLS_V1_2", minTlsVersion="TLS_V1_2"),),
            "tls: invalid TLS version range: TLS_V1_3 above TLS_V1_2": (https(minTLSVersion="TLS_V1_3", maxTLSVersion="TLS_V1_2"),),
            "tls.cipherSuites[0]: unknown cipher suite 'RC4-SHA'": (https(cipherSuites=["RC4-SHA"]),),
            "tls.cipherSuites: no cipher suite of the TLS versions allowed": (https(maxTLSVersion="TLS_V1_2", cipherSuites=["TLS_AES_256_GCM_SHA384"]),),
            "tls.mode: mode dynamicCa is supported by agentgateway but not by agw yet": (https(mode="dynamicCa"),),
            "tls.root: supported by agentgateway but not by agw yet": (https(root="ca.pem"),),
            "tls.keyExchangeGroups: supported by agentgateway but not by agw yet": (https(keyExchangeGroups=["X25519"]),),
        }
        for expected, listeners in cases.items():
            with self.subTest(expected=expected):
                message = self.error(*listeners)
                self.assertIn(expected, message)
                self.assertNotIn("\n", message)


class CertificateFileTests(SynchronousTestCase):
    """The files are read and checked at start (and by --validate-only): one line naming the listener and why."""

    def setUp(self) -> None:
        self.ca = TestCA.make()
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.tls = self.ca.listener_tls(self.directory)

    def problem(self, **tls: str) -> str:
        config = config_of(https(**{**self.tls, **tls}))
        with self.assertRaises(ConfigError) as e:
            check_files(config)
        with self.assertRaises(ListenerTLSError):
            Gateway(config).service()  # an embedder gets the same reason
        return str(e.exception)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_good_files_pass(self) -> None:
        check_files(config_of(https(**self.tls)))

    def test_each_problem_named(self) -> None:
        other = TestCA.make()
        key = load_pem_private_key(self.ca.server_key_pem, None)
        encrypted = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
        cases = {
            "cannot read the certificate file missing.pem: No such file or directory": {"cert": "missing.pem"},
            "cannot read the key file missing.key: No such file or directory": {"key": "missing.key"},
            "no PEM certificate in": {"cert": self.write("garbage.pem", b"not a certificate")},
            "no PEM private key in": {"key": self.write("cert-as-key.pem", self.ca.server_pem)},
            "is encrypted (agw reads unencrypted PEM keys)": {"key": self.write("encrypted.key", encrypted)},
            "does not match the certificate in": {"key": self.write("other.key", other.server_key_pem)},
        }
        for expected, tls in cases.items():
            with self.subTest(expected=expected):
                message = self.problem(**tls)
                self.assertTrue(message.startswith("binds[0].listeners[0].tls: "), message)
                self.assertIn(expected, message)
                self.assertNotIn("BEGIN", message)  # no key material, ever


def metrics_now(agw: TwistdAgw) -> str:
    """The pool's /metrics page, read synchronously (for polling)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agw.stats}/metrics", timeout=5) as response:
        return str(response.read().decode())


class TLSStartupTests(TestCase):
    @inlineCallbacks
    def test_validate_only_names_the_mismatched_key(self) -> Any:
        ca, other = TestCA.make(), TestCA.make()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        tls = {**ca.listener_tls(directory), "key": other.listener_tls(directory)["key"]}
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(https_config(9, tls))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [twistd, "-n", "--pidfile=", "agw", "-f", path, "-i", "127.0.0.1", "--validate-only"]
        env = {**os.environ, "PYTHONPATH": REPO, "OPENAI_API_KEY": BACKEND_KEY}
        done = yield deferToThread(subprocess.run, command, env=env, capture_output=True, timeout=50, text=True)
        self.assertEqual((done.returncode, done.stdout), (1, ""))
        self.assertEqual(done.stderr.strip().splitlines(), [
            f"binds[0].listeners[0].tls: the key in {tls['key']} does not match the certificate in {tls['cert']}",
        ])
        with open(tls["key"], "wb") as f:
            f.write(ca.server_key_pem)  # the right key: valid, and the bind shows as HTTPS
        done = yield deferToThread(subprocess.run, command, env=env, capture_output=True, timeout=50, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"bind/0: 127.0.0.1:0 (HTTPS: {tls['cert']})", done.stdout)

    @inlineCallbacks
    def test_a_reload_with_a_bad_certificate_is_refused_and_the_old_one_served(self) -> Any:
        _, upstream_port = yield listening_fake(self)
        ca = TestCA.make()
        directory = self.mktemp()
        os.makedirs(directory)
        _, service, port = yield running_gateway(self, https_config(upstream_port, ca.listener_tls(directory)))
        broken = {**ca.listener_tls(directory), "key": TestCA.make().listener_tls(directory)["key"]}
        with self.assertRaises(ReloadRefused) as refused:
            service.reload(parse_config(https_config(upstream_port, broken), {"OPENAI_API_KEY": BACKEND_KEY}))
        self.assertIn("binds[0].listeners[0].tls: the key in", str(refused.exception))
        served = yield deferToThread(handshake, port, client_context(ca))
        self.assertEqual(served["serial"], ca.serial)

    @inlineCallbacks
    def test_sighup_serves_renewed_files_from_every_worker(self) -> Any:
        """twistd with --workers: certificate files renewed in place are served after SIGHUP, by each worker."""
        _, upstream_port = yield listening_fake(self)
        ca = TestCA.make()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        tls = ca.listener_tls(directory)

        def edit(config: dict[str, Any]) -> None:
            config["binds"][0]["listeners"][0].update(protocol="HTTPS", tls=tls)

        agw = yield TwistdAgw.start(self, upstream_port, "--workers", "2", edit=edit)
        yield wait_until(lambda: "agw_workers_ready 2.0" in metrics_now(agw), timeout=30)
        first = yield deferToThread(handshake, agw.port, client_context(ca))
        self.assertEqual(first["serial"], ca.serial)
        renewed = ca.renewed()
        for path, data in ((tls["cert"], renewed.server_pem), (tls["key"], renewed.server_key_pem)):
            with open(path, "wb") as f:
                f.write(data)
        agw.process.send_signal(signal.SIGHUP)
        yield wait_until(lambda: len(re.findall(r"config reloaded \(SIGHUP\)", agw.log_text())) == 3, timeout=20)
        # SO_REUSEPORT spreads connections over both workers: every one gets the renewed certificate.
        for _ in range(8):
            served = yield deferToThread(handshake, agw.port, client_context(ca))
            self.assertEqual(served["serial"], renewed.serial)
        self.assertEqual((yield agw.stop()), 0)
