"""Reading a provider's refusal of a handshake from raw bytes, however it is framed and however it arrives."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from agw.realtime import MAX_REFUSAL_BODY, Incomplete, dechunk, parse_refusal

HEAD = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"


class ParseRefusalTests(SynchronousTestCase):
    def test_switching_protocols_is_not_a_refusal(self) -> None:
        self.assertIsNone(parse_refusal(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"))

    def test_content_length_waits_for_the_whole_body(self) -> None:
        data = HEAD + b"Content-Length: 10\r\n\r\n0123456789"
        for cut in range(len(data)):
            self.assertRaises(Incomplete, parse_refusal, data[:cut])
        refusal = parse_refusal(data)
        self.assertEqual((refusal.status, refusal.reason, refusal.body), (429, "Too Many Requests", b"0123456789"))

    def test_chunked_body_arriving_byte_by_byte(self) -> None:
        data = HEAD + b"Transfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\n"
        for cut in range(len(data)):
            self.assertRaises(Incomplete, parse_refusal, data[:cut])
        self.assertEqual(parse_refusal(data).body, b"Wikipedia in \r\n\r\nchunks.")

    def test_body_until_close(self) -> None:
        data = HEAD + b"\r\npartial"
        self.assertRaises(Incomplete, parse_refusal, data)
        self.assertEqual(parse_refusal(data, complete=True).body, b"partial")

    def test_large_bodies_are_cut(self) -> None:
        big = b"x" * (MAX_REFUSAL_BODY + 10)
        self.assertEqual(len(dechunk(b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))), MAX_REFUSAL_BODY)
        self.assertEqual(len(parse_refusal(HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(big), big)).body), MAX_REFUSAL_BODY)

    def test_malformed_chunks_give_an_empty_body(self) -> None:
        self.assertEqual(parse_refusal(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").body, b"")
