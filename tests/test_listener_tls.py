"""
agw's listeners over TLS (agentgateway's C{protocol: HTTPS}, C{tls: {cert,
key}}), for real on loopback with certificates from L{agw.testing.TestCA}:
the OpenAI SDK's completions over https://, Realtime over wss:// metered
exactly as over ws://, TLS 1.2 and 1.3 only, ALPN http/1.1, the certificate
chosen by server name, HTTP and HTTPS binds side by side, and certificates
reloaded with the config (new connections get the new one, open sessions
keep theirs).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw import parse_config
from agw.realtime import RelayOptions
from agw.testing import TestCA
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    free_port,
    listening_fake,
    on_twisted_web,
    raw_exchange,
    registry_samples,
    run_session,
    running_gateway,
    seed_config_text,
    token_sums,
    wait_until,
)
from tests.tls_support import client_context, handshake, https_config, open_wss, peer_serial, respond, wss_session

try:  # the openai SDK's HTTP client: httpx, or httpx2 in its newer releases
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the SDK installed
    import httpx  # type: ignore[no-redef]


def sdk_completion(base_url: str, ca: TestCA) -> Any:
    """A chat completion through the OpenAI SDK, trusting C{ca} (run in a thread)."""
    from openai import OpenAI

    with httpx.Client(verify=client_context(ca)) as http:
        client = OpenAI(api_key=CLIENT_KEY, base_url=base_url, http_client=http, max_retries=0)
        return client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Say hello"}])


def counted(gateway: Any) -> dict[tuple[str, str, str], float]:
    """Tokens on the gateway's metrics by (operation, response model, token type), as the fake's C{billed()}."""
    return {key: value for key, value in token_sums(registry_samples(gateway.metrics.registry)).items() if value}


def directory(case: TestCase) -> str:
    """A new directory for C{case}'s certificate files."""
    path = case.mktemp()
    os.makedirs(path)
    return path


class HTTPSListenerTests(TestCase):
    """The seed config served over TLS on one bind (and, where a test says, plain HTTP on another)."""

    @inlineCallbacks
    def start(self, ca: TestCA, http_port: int | None = None, **tls: Any) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        self.ca = ca
        config = https_config(upstream_port, {**ca.listener_tls(directory(self)), **tls}, http_port)
        self.gateway, self.service, self.port = yield running_gateway(self, config)

    def counted(self) -> dict[tuple[str, str, str], float]:
        return counted(self.gateway)

    @inlineCallbacks
    def test_sdk_completions_over_https(self) -> Any:
        yield self.start(TestCA.make())
        completion = yield deferToThread(sdk_completion, f"https://127.0.0.1:{self.port}/v1", self.ca)
        self.assertGreater(completion.usage.total_tokens, 0)
        seen = self.fake.http_requests[-1]
        self.assertEqual((seen.uri, seen.headers["authorization"]), ("/v1/chat/completions", f"Bearer {BACKEND_KEY}"))
        yield wait_until(lambda: self.counted() == self.fake.billed())

    @inlineCallbacks
    def test_realtime_over_wss_metered_exactly(self) -> Any:
        yield self.start(TestCA.make())
        serial, done = yield deferToThread(wss_session, f"wss://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime", self.ca, 3)
        self.assertEqual((serial, len(done)), (self.ca.serial, 3))
        yield wait_until(lambda: self.counted() == self.fake.billed())
        self.assertEqual(len(self.fake.ledger), 3)

    @inlineCallbacks
    def test_a_wss_leg_buffers_on_its_tcp_transport(self) -> Any:
        """Back pressure through TLS: the bytes waiting for a slow reader are the TCP transport's, under TLS."""
        yield self.start(TestCA.make())
        ws = yield deferToThread(open_wss, f"wss://127.0.0.1:{self.port}/v1/realtime?model=m", self.ca)
        self.addCleanup(deferToThread, ws.close)
        (relay,) = [relay for relay in self.gateway.relays if relay.sessions]
        (leg,) = relay.sessions
        self.assertEqual(leg.transport.transport.bufferSize, RelayOptions().write_buffer_size)

    @inlineCallbacks
    def test_only_tls_12_and_13_alpn_http11(self) -> Any:
        yield self.start(TestCA.make())
        modern = yield deferToThread(handshake, self.port, client_context(self.ca))
        self.assertEqual((modern["version"], modern["serial"]), ("TLSv1.3", self.ca.serial))
        tls12 = client_context(self.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        tls12.set_alpn_protocols(["h2", "http/1.1"])
        agreed = yield deferToThread(handshake, self.port, tls12)
        self.assertEqual((agreed["version"], agreed["alpn"]), ("TLSv1.2", "http/1.1"))
        self.assertRegex(agreed["cipher"], r"^ECDHE-(ECDSA|RSA)-(AES\d+-GCM|CHACHA20-POLY1305)")
        old = client_context(self.ca, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client would offer TLS 1.1; the server must refuse it
        with self.assertRaises(ssl.SSLError) as refused:
            yield deferToThread(handshake, self.port, old)
        self.assertIn("PROTOCOL_VERSION", str(refused.exception).upper())

    @inlineCallbacks
    def test_versions_and_cipher_suites_as_configured(self) -> Any:
        yield self.start(TestCA.make(), maxTLSVersion="TLS_V1_2", cipherSuites=["ECDHE-ECDSA-CHACHA20-POLY1305"])
        agreed = yield deferToThread(handshake, self.port, client_context(self.ca))
        self.assertEqual((agreed["version"], agreed["cipher"]), ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"))

    @inlineCallbacks
    def test_http_and_https_binds_side_by_side(self) -> Any:
        http_port = free_port()
        yield self.start(TestCA.make(), http_port=http_port)
        url = "{}://127.0.0.1:{}/v1/realtime?model=gpt-realtime"
        secure = yield deferToThread(wss_session, url.format("wss", self.port), self.ca, 1)
        plain = yield deferToThread(run_session, f"ws://127.0.0.1:{http_port}/v1", 1)
        self.assertEqual((len(secure[1]), len(plain)), (1, 1))
        completion = yield deferToThread(sdk_completion, f"https://127.0.0.1:{self.port}/v1", self.ca)
        self.assertGreater(completion.usage.total_tokens, 0)
        yield wait_until(lambda: self.counted() == self.fake.billed())
        # Each bind is its own metric series (bind label), and each speaks only its protocol.
        binds = {dict(labels)["bind"] for (name, labels), value in registry_samples(self.gateway.metrics.registry).items()
                 if name == "agentgateway_gen_ai_client_token_usage_count" and value}
        self.assertEqual(binds, {"0", str(http_port)})  # the config's ports
        # Plain HTTP to the HTTPS bind gets no HTTP answer: the TLS handshake fails and the connection closes.
        answer = yield deferToThread(raw_exchange, self.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(answer.startswith(b"HTTP/"), answer[:40])


class ReloadedCertificateTests(TestCase):
    @inlineCallbacks
    def test_new_connections_get_the_new_certificate_open_sessions_keep_theirs(self) -> Any:
        fake, upstream_port = yield listening_fake(self)
        ca = TestCA.make()
        files = directory(self)
        gateway, service, port = yield running_gateway(self, https_config(upstream_port, ca.listener_tls(files)))
        url = f"wss://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        old = yield deferToThread(open_wss, url, ca)
        self.addCleanup(deferToThread, old.close)
        yield deferToThread(respond, old)

        renewed = ca.renewed()
        # The config the file watcher or SIGHUP would load: the same bind, renewed certificate files.
        service.reload(parse_config(https_config(upstream_port, renewed.listener_tls(files)), {"OPENAI_API_KEY": BACKEND_KEY}))

        fresh = yield deferToThread(handshake, port, client_context(ca))
        self.assertEqual(fresh["serial"], renewed.serial)
        done = yield deferToThread(respond, old)  # the open session goes on, on its first certificate
        self.assertEqual((done["type"], peer_serial(old.socket)), ("response.done", ca.serial))
        again = yield deferToThread(wss_session, url, ca, 1)
        self.assertEqual(again[0], renewed.serial)
        yield wait_until(lambda: counted(gateway) == fake.billed())


    @inlineCallbacks
    def test_a_reload_turns_a_bind_https_and_back(self) -> Any:
        _, upstream_port = yield listening_fake(self)
        ca, environ = TestCA.make(), {"OPENAI_API_KEY": BACKEND_KEY}
        plain = seed_config_text(upstream_port)
        _, service, port = yield running_gateway(self, plain)
        service.reload(parse_config(https_config(upstream_port, ca.listener_tls(directory(self))), environ))
        completion = yield deferToThread(sdk_completion, f"https://127.0.0.1:{port}/v1", ca)
        self.assertGreater(completion.usage.total_tokens, 0)
        service.reload(parse_config(plain, environ))
        answer = yield deferToThread(raw_exchange, port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:40])


class ServerNameTests(TestCase):
    """Several HTTPS listeners on one bind: the server name (SNI) picks the certificate, as agentgateway."""

    @inlineCallbacks
    def test_exact_then_wildcard_and_no_match_refused(self) -> Any:
        _, upstream_port = yield listening_fake(self)
        ca = TestCA.make()
        exact, wildcard = ca.renewed("a.example.test"), ca.renewed("*.b.example.test")
        files = directory(self)
        data = yaml.safe_load(seed_config_text(upstream_port))
        first = data["binds"][0]["listeners"][0]
        second = {**first, "name": "b", "hostname": "*.b.example.test", "tls": wildcard.listener_tls(files), "protocol": "HTTPS"}
        first.update(name="a", hostname="a.example.test", tls=exact.listener_tls(files), protocol="HTTPS")
        data["binds"][0]["listeners"].append(second)
        _, _, port = yield running_gateway(self, yaml.safe_dump(data))
        by_name = yield deferToThread(handshake, port, client_context(ca), "a.example.test")
        by_wildcard = yield deferToThread(handshake, port, client_context(ca), "api.b.example.test")
        self.assertEqual((by_name["serial"], by_wildcard["serial"]), (exact.serial, wildcard.serial))
        for name in ("other.example.test", None):  # no listener for it, and none without a hostname
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                yield deferToThread(handshake, port, client_context(ca), name)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebHTTPSListenerTests = on_twisted_web(HTTPSListenerTests)
