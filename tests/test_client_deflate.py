"""
permessage-deflate on the client leg (C{RelayOptions.client_deflate},
C{--client-deflate}): what each setting answers to the offers browsers, Node's
C{ws} and odd clients make, that messages round-trip and every token is
counted under each, that the default keeps no zlib state between messages, and
that compressed input is held to the same limits. Memory itself is measured
in bench/deflate_memory.py, not here.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import zlib
from typing import Any

from autobahn.exception import PayloadCorruptError, PayloadExceededError
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from websockets.sync.client import connect

from agw.realtime import RelayOptions
from agw.realtime._deflate import LeanDeflate
from tests.support import CLIENT_KEY, GatewayTestCase, recv_event, token_sums, wait_until

TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
CHROME = "permessage-deflate; client_max_window_bits"  # Chrome's and Node ws's offer


class DeflateClient:
    """A WebSocket client on a plain socket offering C{extensions} (blocking: run it in a thread)."""

    def __init__(self, port: int, extensions: str | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions is not None else ""
        self.sock.sendall((
            f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {CLIENT_KEY}\r\n{offer}\r\n"
        ).encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += self.sock.recv(65536)
        head, _, self.buffer = received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        self.inflater = zlib.decompressobj(-15)  # a window as large as any agw may use, kept: valid with or without context takeover

    @property
    def extensions(self) -> str | None:
        return self.headers.get("sec-websocket-extensions")

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def message(self) -> tuple[int, bool, bytes]:
        """The next message from agw (unfragmented, unmasked): opcode, whether it came compressed, payload."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        payload, compressed = self._take(length), bool(first & 0x40)
        if compressed:
            payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        return first & 0x0F, compressed, payload

    def event(self, kind: str) -> tuple[bool, dict[str, Any]]:
        """The next event of type C{kind}, and whether it came compressed."""
        while True:
            opcode, compressed, payload = self.message()
            if opcode == TEXT and (event := json.loads(payload))["type"] == kind:
                return compressed, event

    def send(self, payload: bytes, opcode: int = TEXT, window_bits: int | None = 15) -> None:
        """One masked frame; compressed (RSV1) with a fresh context unless C{window_bits} is C{None}."""
        first = 0x80 | opcode
        if window_bits is not None:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
            payload, first = (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4], first | 0x40
        length, mask = len(payload), os.urandom(4)
        size = bytes([0x80 | length]) if length < 126 else (
            bytes([0xFE]) + struct.pack("!H", length) if length < 65536 else bytes([0xFF]) + struct.pack("!Q", length))
        self.sock.sendall(bytes([first]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close_code(self) -> int | None:
        """Read until agw's close frame; its code."""
        while True:
            opcode, _, payload = self.message()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if payload else None

    def close(self) -> None:
        self.sock.close()


def handshake(port: int, extensions: str | None) -> tuple[int, str | None, bool]:
    """Status, negotiated extensions, and whether the session then works (session.created, and an echo round trip)."""
    client = DeflateClient(port, extensions)
    try:
        if client.status != 101:
            return client.status, client.extensions, False
        client.event("session.created")
        compress = 15 if client.extensions else None
        client.send(json.dumps({"type": "test.echo", "n": "x" * 5000}).encode(), window_bits=compress)
        _, echo = client.event("test.echo")
        return client.status, client.extensions, echo["n"] == "x" * 5000
    finally:
        client.close()


# Offers agw declines whatever the setting (the session goes on uncompressed), RFC 7692 section 7.
ODD_OFFERS = (
    "permessage-deflate; server_max_window_bits=8",  # zlib cannot compress within 256 bytes
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=08",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; mystery=1",
    "permessage-deflate; client_max_window_bits; client_max_window_bits",
    "x-webkit-deflate-frame",
    "permessage-bzip2",
)


class Negotiating:
    """Mixin: the table of offers and answers of one setting, each answered with 101 and a working session."""

    answers: dict[str, str | None]
    port: int

    @inlineCallbacks
    def test_negotiates_what_the_setting_says(self) -> Any:
        for offer, expected in {**self.answers, **dict.fromkeys(ODD_OFFERS)}.items():
            status, negotiated, works = yield deferToThread(handshake, self.port, offer)
            self.assertEqual((status, negotiated, works), (101, expected, True), offer)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_messages_round_trip_and_every_token_is_counted(self) -> Any:
        """websockets with compression (its offer is Chrome's): text and binary come back whole, tokens are exact."""
        text = json.dumps({"type": "test.echo", "text": "hello " * 50_000})
        binary = os.urandom(100_000)

        def session() -> str | None:
            with connect(
                f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime", compression="deflate", max_size=None,
                additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            ) as ws:
                recv_event(ws)
                ws.send(text)
                assert ws.recv(timeout=10) == text
                ws.send(binary)
                assert ws.recv(timeout=10) == binary
                for _ in range(3):
                    ws.send(json.dumps({"type": "response.create"}))
                    while recv_event(ws)["type"] != "response.done":
                        pass
                return ws.response.headers.get("Sec-WebSocket-Extensions")

        negotiated = yield deferToThread(session)
        self.assertEqual(negotiated, self.answers[CHROME])  # type: ignore[attr-defined]
        samples = yield self.scrape()  # type: ignore[attr-defined]
        billed = {k: float(v) for k, v in self.fake.billed().items()}  # type: ignore[attr-defined]
        self.assertEqual(len(self.fake.ledger), 3)  # type: ignore[attr-defined]
        self.assertEqual(billed, token_sums(samples))  # type: ignore[attr-defined]


class SmallTests(Negotiating, GatewayTestCase):
    """Small windows, no context kept on either side."""

    relay_options = RelayOptions(client_deflate="small")
    answers = {
        CHROME: "permessage-deflate; client_no_context_takeover; client_max_window_bits=12",
        "permessage-deflate": "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=15":
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_no_context_takeover; client_max_window_bits=12",
        # A client that will use a smaller window than agw would ask for is asked for none.
        "permessage-deflate; client_max_window_bits=8": "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10": "permessage-deflate; client_no_context_takeover",
        # The first offer agw can take.
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits":
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=12",
    }

    @inlineCallbacks
    def test_no_zlib_state_between_messages(self) -> Any:
        """Server events come compressed, audio deltas pass through as the provider sent them; between messages the session holds no zlib state."""
        client = yield deferToThread(DeflateClient, self.port, CHROME)
        self.addCleanup(client.close)
        compressed, _ = yield deferToThread(client.event, "session.created")
        self.assertTrue(compressed)
        client.send(json.dumps({"type": "test.stream", "bytes": 20_000, "chunk": 4096}).encode(), window_bits=12)
        compressed, delta = yield deferToThread(client.event, "response.output_audio.delta")
        self.assertFalse(compressed)
        (leg,) = self.gateway.relays[0].sessions
        self.assertIsInstance(leg._deflate, LeanDeflate)
        self.assertFalse(leg._deflate.holding)

    @inlineCallbacks
    def test_corrupt_compressed_message_is_1007(self) -> Any:
        client = yield deferToThread(DeflateClient, self.port, CHROME)
        self.addCleanup(client.close)
        yield deferToThread(client.event, "session.created")
        first, mask = 0xC1, os.urandom(4)  # FIN, RSV1 (compressed), text
        payload = b"\xff\xfe\xfd not deflate"
        client.sock.sendall(bytes([first, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        code = yield deferToThread(client.close_code)
        self.assertEqual(code, 1007)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)


class SmallLimitTests(GatewayTestCase):
    relay_options = RelayOptions(client_deflate="small", max_message_size=1024 * 1024)

    @inlineCallbacks
    def test_message_that_inflates_past_the_limit_is_1009(self) -> Any:
        """Counted after decompression: 2 MiB that compress to a few KiB still close the session with 1009."""
        client = yield deferToThread(DeflateClient, self.port, CHROME)
        self.addCleanup(client.close)
        yield deferToThread(client.event, "session.created")
        client.send(json.dumps({"type": "test.echo", "n": " " * (2 * 1024 * 1024)}).encode(), window_bits=12)
        code = yield deferToThread(client.close_code)
        self.assertEqual(code, 1009)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)


class AcceptTests(Negotiating, GatewayTestCase):
    """As the client offered: its windows and context rules."""

    relay_options = RelayOptions(client_deflate="accept")
    answers = {
        CHROME: "permessage-deflate",
        "permessage-deflate": "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10":
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=8": "permessage-deflate",
    }

    @inlineCallbacks
    def test_zlib_state_kept_while_open_and_dropped_at_close(self) -> Any:
        client = yield deferToThread(DeflateClient, self.port, CHROME)
        yield deferToThread(client.event, "session.created")
        (leg,) = self.gateway.relays[0].sessions
        self.assertTrue(leg._deflate.holding)  # the compressor that sent session.created keeps its context
        client.close()
        yield wait_until(lambda: not self.gateway.relays[0].connections)
        self.assertFalse(leg._deflate.holding)


class OffTests(Negotiating, GatewayTestCase):
    """The default: every offer declined, the session goes on uncompressed."""

    answers = {CHROME: None, "permessage-deflate": None, "permessage-deflate; server_no_context_takeover": None}

    def test_is_the_default(self) -> None:
        self.assertEqual(RelayOptions().client_deflate, "off")


class LeanDeflateTests(SynchronousTestCase):
    def deflate(self, keep: bool) -> LeanDeflate:
        return LeanDeflate(12, 15, keep_compressor=keep, keep_decompressor=keep, level=1, mem_level=5)

    def round_trip(self, deflate: LeanDeflate, data: bytes) -> bytes:
        deflate.start_compress_message()
        compressed = deflate.compress_message_data(data) + deflate.end_compress_message()
        deflate.start_decompress_message()
        out = deflate.decompress_message_data(compressed, max_output_len=len(data))
        deflate.end_decompress_message()
        return out

    def test_without_context_takeover_nothing_is_held_between_messages(self) -> None:
        deflate = self.deflate(keep=False)
        for data in (b"a" * 10_000, os.urandom(5000)):
            self.assertEqual(self.round_trip(deflate, data), data)
            self.assertFalse(deflate.holding)

    def test_with_context_takeover_state_is_held_until_released(self) -> None:
        deflate = self.deflate(keep=True)
        self.assertEqual(self.round_trip(deflate, b"hello " * 100), b"hello " * 100)
        self.assertTrue(deflate.holding)
        deflate.release()
        self.assertFalse(deflate.holding)

    def test_output_over_the_budget_is_refused_not_truncated(self) -> None:
        deflate = self.deflate(keep=False)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -12)
        data = compressor.compress(b"x" * 100_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
        deflate.start_decompress_message()
        self.assertRaises(PayloadExceededError, deflate.decompress_message_data, data, 99_999)
        deflate.start_decompress_message()
        self.assertRaises(PayloadExceededError, deflate.decompress_message_data, data, 0)

    def test_corrupt_input(self) -> None:
        deflate = self.deflate(keep=False)
        deflate.start_decompress_message()
        self.assertRaises(PayloadCorruptError, deflate.decompress_message_data, b"\xff\xfe\xfd not deflate", None)

    def test_unknown_setting_is_a_clear_error(self) -> None:
        with self.assertRaises(ValueError) as e:
            RelayOptions(client_deflate="fast")
        self.assertIn("client_deflate", str(e.exception))
