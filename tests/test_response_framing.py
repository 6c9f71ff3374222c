"""
An upstream's answer reaches the client framed as the upstream framed it,
checked as bytes on both sides: a body that ends at the close ends at the
close, HEAD keeps its length, 204 and 304 carry none, headers the upstream's
C{Connection} names stay behind, no Content-Type or Content-Encoding is
invented, and the client's C{Expect} stays with agw.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import on_twisted_web
from tests.wire_support import RawRequest, answer, gateway_to, header_names, header_value, raw_request, read_response

GET = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"


class ResponseFramingTests(TestCase):
    """Each test's upstream answers every request with C{self.reply}."""

    reply: tuple[bytes, bool] = answer(b"200 OK", [(b"Content-Length", b"2")], b"{}")

    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, _, _ = yield gateway_to(self, lambda request: self.reply)

    def exchange(self, data: bytes = GET, head_only: bool = False) -> Any:
        return deferToThread(raw_request, self.port, data, head_only)

    @inlineCallbacks
    def test_a_body_that_ends_at_the_close_ends_at_the_close(self) -> Any:
        """
        Close-delimited upstream: agw cannot know whether the body is whole
        either, so the client gets it framed the same way, not as a chunked
        body cut short (which says: incomplete) nor with a last chunk (which
        says: complete).
        """
        self.reply = answer(b"200 OK", [(b"Content-Type", b"text/plain"), (b"Connection", b"close")], b"all of it", close=True)
        head, body, complete = yield self.exchange()
        self.assertTrue(head.split(b" ")[1] == b"200", head)
        self.assertNotIn(b"transfer-encoding", header_names(head))
        self.assertNotIn(b"content-length", header_names(head))
        self.assertEqual((body, complete), (b"all of it", True))

    @inlineCallbacks
    def test_a_chunked_body_cut_short_reaches_the_client_incomplete(self) -> Any:
        self.reply = answer(b"200 OK", [(b"Transfer-Encoding", b"chunked")], b"4\r\npart\r\n", close=True)
        head, body, complete = yield self.exchange()
        self.assertEqual(header_value(head, b"transfer-encoding"), b"chunked")
        self.assertEqual((body, complete), (b"4\r\npart\r\n", False))

    @inlineCallbacks
    def test_headers_the_upstream_connection_names_stay_behind(self) -> Any:
        self.reply = answer(b"200 OK", [
            (b"Connection", b"keep-alive, X-Internal"), (b"X-Internal", b"upstream-only"), (b"X-Request-Id", b"r1"),
            (b"Content-Length", b"2"),
        ], b"{}")
        head, body, _ = yield self.exchange()
        self.assertNotIn(b"x-internal", header_names(head))
        self.assertEqual((header_value(head, b"x-request-id"), body), (b"r1", b"{}"))

    @inlineCallbacks
    def test_head_keeps_the_upstreams_length(self) -> Any:
        self.reply = answer(b"200 OK", [(b"Content-Type", b"application/json"), (b"Content-Length", b"1234")])
        head, _, _ = yield self.exchange(b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n", head_only=True)
        self.assertEqual(header_value(head, b"content-length"), b"1234")

    @inlineCallbacks
    def test_head_without_a_length_says_none(self) -> Any:
        self.reply = answer(b"200 OK", [(b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")])
        head, _, _ = yield self.exchange(b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n", head_only=True)
        self.assertNotIn(b"content-length", header_names(head))

    @inlineCallbacks
    def test_204_and_304_carry_no_length(self) -> Any:
        for status in (b"204 No Content", b"304 Not Modified"):
            self.reply = answer(status, [(b"ETag", b'"e1"')])
            head, _, _ = yield self.exchange()
            self.assertTrue(head.startswith(b"HTTP/1.1 " + status[:3]), head)
            self.assertNotIn(b"content-length", header_names(head))
            self.assertNotIn(b"transfer-encoding", header_names(head))

    @inlineCallbacks
    def test_no_content_type_or_encoding_is_invented(self) -> Any:
        self.reply = answer(b"200 OK", [(b"Content-Length", b"5")], b"bytes")
        head, body, _ = yield self.exchange()
        self.assertEqual(body, b"bytes")
        self.assertNotIn(b"content-type", header_names(head))  # twisted.web's default is text/html
        self.assertNotIn(b"content-encoding", header_names(head))

    @inlineCallbacks
    def test_expect_stays_with_agw(self) -> Any:
        """agw answered the client's 100-continue itself; the upstream gets the whole body with no expectation."""
        def upload(port: int) -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
                interim, _, _ = read_response(sock)
                sock.sendall(b"data")
                head, _, _ = read_response(sock)
                return interim, head

        interim, head = yield deferToThread(upload, self.port)
        self.assertTrue(interim.startswith(b"HTTP/1.1 100"), interim)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        request: RawRequest = self.upstream.requests[-1]
        self.assertEqual(request.body, b"data")
        self.assertNotIn("expect", request.headers)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebResponseFramingTests = on_twisted_web(ResponseFramingTests)
