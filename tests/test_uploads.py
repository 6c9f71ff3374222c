"""
Uploads cannot hold a bind: a body holds the bytes that arrived, not the
length it announced; it must keep arriving at a minimum rate (after a
grace period) or it is refused with 408; a client the route would refuse
learns so before it is told to upload (no 100 Continue).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.config import MiB
from agw.http import HTTPOptions
from tests.support import on_twisted_web, wait_until
from tests.wire_support import gateway_to, ok, raw_request, read_response, status_and_error

KEY = "sk-uploader-0123456789"



def announce(port: int, length: int, sent: bytes, extra: bytes = b"") -> socket.socket:
    """A connection that announced a body of C{length} bytes and sent C{sent} of it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n%s\r\n%s" % (length, extra, sent))
    return sock


class SlowUploadTests(TestCase):
    grace, rate = 20.0, 1000

    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, service = yield gateway_to(
            self, ok, http_options=HTTPOptions(upload_grace=self.grace, upload_min_rate=self.rate),
        )
        self.site = service.site_of(0)
        self.clock = self.site.upload_clock = Clock()  # upload deadlines on a clock of the test's

    def connect(self, length: int, sent: bytes) -> Any:
        connecting = deferToThread(announce, self.port, length, sent)
        connecting.addCallback(lambda sock: self.addCleanup(sock.close) or sock)
        return connecting

    @inlineCallbacks
    def test_idle_uploads_do_not_hold_the_budget(self) -> Any:
        """Four connections announcing 512 MiB, one byte sent each: the next upload is served, then they are cut at the deadline."""
        idle = []
        for _ in range(4):
            idle.append((yield self.connect(512 * MiB, b"x")))
        yield wait_until(lambda: self.site.body_budget.held >= 4)
        head, body, _ = yield deferToThread(
            raw_request, self.port, b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(self.site.body_budget.held, 4)  # the bytes that arrived, not 2 GiB announced
        self.clock.advance(self.grace + 1)
        for sock in idle:
            refused = yield deferToThread(read_response, sock)
            self.assertEqual(status_and_error(refused), (408, "request_timeout"))
        yield wait_until(lambda: self.site.body_budget.held == 0)

    @inlineCallbacks
    def test_an_upload_at_the_minimum_rate_is_given_time(self) -> Any:
        """Every 1000 bytes arrived buys a second past the grace period (as Apache's mod_reqtimeout MinRate)."""
        sock = yield self.connect(100_000, b"y" * 25_000)
        yield wait_until(lambda: self.site.body_budget.held == 25_000)
        self.clock.advance(self.grace + 20)  # 40 s: within 20 s + 25 s
        yield deferToThread(sock.sendall, b"y" * 75_000)
        head, body, complete = yield deferToThread(read_response, sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(len(self.upstream.requests[-1].body), 100_000)

    @inlineCallbacks
    def test_a_stalled_upload_is_refused_with_408(self) -> Any:
        sock = yield self.connect(100_000, b"y" * 25_000)
        yield wait_until(lambda: self.site.body_budget.held == 25_000)
        self.clock.advance(self.grace + 26)  # 46 s: past 20 s + 25 s
        refused = yield deferToThread(read_response, sock)
        self.assertEqual(status_and_error(refused), (408, "request_timeout"))
        self.assertEqual(self.upstream.requests, [])


def strict_keys(config: dict) -> None:
    route = config["binds"][0]["listeners"][0]["routes"][1]
    route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": KEY, "allowPassthrough": True}]}


class KeyBeforeUploadTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, _ = yield gateway_to(self, ok, strict_keys)

    def expect(self, extra: bytes) -> Any:
        """Announce 10 MB with Expect: 100-continue; what agw answers before anything is uploaded."""
        def run() -> tuple[bytes, bytes, bool]:
            with announce(self.port, 10_000_000, b"", b"Expect: 100-continue\r\n" + extra) as sock:
                return read_response(sock)

        return deferToThread(run)

    @inlineCallbacks
    def test_no_key_is_refused_before_100_continue(self) -> Any:
        refused = yield self.expect(b"")
        self.assertEqual(status_and_error(refused), (401, "missing_api_key"))
        refused = yield self.expect(b"Authorization: Bearer sk-wrong\r\n")
        self.assertEqual(status_and_error(refused), (401, "invalid_api_key"))
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_a_known_key_is_told_to_continue(self) -> Any:
        interim = yield self.expect(b"Authorization: Bearer %s\r\n" % KEY.encode())
        self.assertTrue(interim[0].startswith(b"HTTP/1.1 100"), interim)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebSlowUploadTests = on_twisted_web(SlowUploadTests)
TwistedWebKeyBeforeUploadTests = on_twisted_web(KeyBeforeUploadTests)
