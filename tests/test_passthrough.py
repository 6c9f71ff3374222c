"""
Frame pass-through: a client's frames reach the provider as the bytes the
client sent (its own mask), fragmented messages and events that can matter
are still read whole, control frames are answered where they arrive, and
governance still sees a response.create that names its type last.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.realtime._frames import BINARY, CONTINUATION, PING, PONG, TEXT, Frame, FrameError, FrameReader
from tests.support import CLIENT_KEY, GatewayTestCase, listening_fake, running_gateway, seed_config_text, wait_until


def client_frame(opcode: int, payload: bytes, mask: bytes = b"\x9a\x1b\x2c\x3d", fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client on a plain socket (blocking: run it in a thread), for exact bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        ).encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += self.sock.recv(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.reader = FrameReader(masked=False)
        self.frames: list[Frame] = self.reader.feed(rest)[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self) -> Frame:
        while not self.frames:
            frames, error = self.reader.feed(self.sock.recv(65536))
            assert error is None, error
            self.frames += frames
        return self.frames.pop(0)

    def next_event(self, kind: str) -> dict[str, Any]:
        while True:
            frame = self.next_frame()
            if frame.opcode == TEXT and (event := json.loads(frame.payload()))["type"] == kind:
                return event

    def close(self) -> None:
        self.sock.close()


class PassThroughTests(GatewayTestCase):
    @inlineCallbacks
    def client(self) -> Any:
        raw = yield deferToThread(RawClient, self.port)
        self.addCleanup(raw.close)
        yield deferToThread(raw.next_event, "session.created")
        return raw

    @inlineCallbacks
    def test_client_frames_reach_the_provider_as_sent(self) -> Any:
        self.fake.record_wire = True
        raw = yield self.client()
        text = client_frame(TEXT, json.dumps({"type": "test.echo", "n": 1}).encode(), mask=b"\x01\x02\x03\x04")
        audio = client_frame(TEXT, json.dumps({"type": "input_audio_buffer.append", "audio": "QUJD" * 20000}).encode())
        binary = client_frame(BINARY, os.urandom(300), mask=b"\xff\x00\xff\x00")
        yield deferToThread(raw.send, text + audio + binary)
        echoed = yield deferToThread(raw.next_event, "test.echo")
        self.assertEqual(echoed["n"], 1)
        yield wait_until(lambda: sum(map(len, self.fake.wire)) >= len(text + audio + binary))
        # Byte for byte, masks included: agw did not unmask and re-mask them.
        self.assertEqual(b"".join(self.fake.wire), text + audio + binary)

    @inlineCallbacks
    def test_an_event_that_names_its_type_twice_is_read_whole(self) -> Any:
        """Its head is not the last word (a provider may act on the other type): it is read whole, for governance."""
        self.fake.record_wire = True
        raw = yield self.client()
        for n, payload in enumerate((
            b'{"type":"input_audio_buffer.append","audio":"' + b"QUJD" * 500 + b'","type":"test.echo"}',
            b'{"type":"input_audio_buffer.append","audio":"QUJD","\\u0074ype":"test.echo","n":1}',  # the same key, escaped
        )):
            frame = client_frame(TEXT, payload)
            yield deferToThread(raw.send, frame)
            yield deferToThread(raw.next_event, "test.echo")  # the fake, like json.loads, acts on the last type
            self.assertEqual(self.fake.received[-1], payload)
            # Forwarded by agw (with its own mask), not passed on as it came.
            self.assertFalse(frame in b"".join(self.fake.wire), f"event {n} passed through as it came")

    @inlineCallbacks
    def test_fragmented_message_is_read_whole_and_forwarded_as_one(self) -> Any:
        raw = yield self.client()
        message = json.dumps({"type": "test.echo", "n": 2}).encode()
        pieces = [message[:5], message[5:11], message[11:]]
        frames = client_frame(TEXT, pieces[0], fin=False) + client_frame(PING, b"in between") + client_frame(CONTINUATION, pieces[1], fin=False)
        frames += client_frame(CONTINUATION, pieces[2])
        yield deferToThread(raw.send, frames)
        pong = yield deferToThread(raw.next_frame)
        self.assertEqual((pong.opcode, pong.payload()), (PONG, b"in between"))  # answered by agw, in the middle of it
        echoed = yield deferToThread(raw.next_event, "test.echo")
        self.assertEqual(echoed["n"], 2)
        self.assertIn(message, self.fake.received)

    @inlineCallbacks
    def test_protocol_errors_still_fail_the_client(self) -> Any:
        raw = yield self.client()
        yield deferToThread(raw.send, client_frame(CONTINUATION, b"no message started"))
        close = yield deferToThread(raw.next_frame)
        self.assertEqual(close.opcode, 0x8)
        self.assertEqual(struct.unpack("!H", close.payload()[:2])[0], 1002)
        # The client answers the close; agw then ends the TCP connection itself (as RFC 6455 prefers of a server).
        yield deferToThread(raw.send, client_frame(0x8, close.payload()[:2]))
        ended = yield deferToThread(self.end_of_stream, raw)
        self.assertEqual(ended, b"")


    @inlineCallbacks
    def test_a_bad_close_frame_ends_the_connection_at_once(self) -> Any:
        raw = yield self.client()
        yield deferToThread(raw.send, client_frame(0x8, struct.pack("!H", 1000) + b"x" * 124))  # 126 bytes: too long
        close = yield deferToThread(raw.next_frame)
        self.assertEqual(struct.unpack("!H", close.payload()[:2])[0], 1002)
        ended = yield deferToThread(self.end_of_stream, raw)  # no close handshake to wait for: the peer sent its close
        self.assertEqual(ended, b"")

    @staticmethod
    def end_of_stream(raw: RawClient) -> bytes:
        raw.sock.settimeout(0.5)  # well inside agw's close handshake timeout (1 s): agw, not its timer, ends it
        try:
            return raw.sock.recv(1)
        except ConnectionResetError:  # Autobahn aborts a connection it failed
            return b""


class GovernedPassThroughTests(TestCase):
    """A rate limit of one response: the second response.create is refused, even with "type" last."""

    timeout = 30

    @inlineCallbacks
    def test_type_last_response_create_is_still_governed(self) -> Any:
        fake, fake_port = yield listening_fake(self)
        config = yaml.safe_load(seed_config_text(fake_port))
        config["binds"][0]["listeners"][0]["routes"][0]["policies"]["localRateLimit"] = [
            {"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "1h", "type": "requests"},
        ]
        _, _, port = yield running_gateway(self, yaml.safe_dump(config))
        raw = yield deferToThread(RawClient, port)
        self.addCleanup(raw.close)
        yield deferToThread(raw.next_event, "session.created")
        yield deferToThread(raw.send, client_frame(TEXT, b'{"type":"response.create"}'))
        yield deferToThread(raw.next_event, "response.done")
        type_last = b'{"event_id":"evt_last","response":{"output_modalities":["text"]},"type":"response.create"}'
        yield deferToThread(raw.send, client_frame(TEXT, type_last))
        refused = yield deferToThread(raw.next_event, "error")
        self.assertEqual(refused["error"]["event_id"], "evt_last")
        self.assertEqual(len(fake.ledger), 1)


class FrameReaderTests(SynchronousTestCase):
    def test_frames_split_anywhere_come_out_whole_and_unchanged(self) -> None:
        stream = client_frame(TEXT, b'{"type":"x"}') + client_frame(BINARY, os.urandom(70000)) + client_frame(PING, b"p")
        for step in (1, 3, 7, 1000, len(stream)):
            reader = FrameReader(masked=True)
            frames: list[Frame] = []
            for start in range(0, len(stream), step):
                read, error = reader.feed(stream[start:start + step])
                self.assertIsNone(error)
                frames += read
            self.assertEqual(b"".join(f.raw for f in frames), stream)
            self.assertEqual([f.opcode for f in frames], [TEXT, BINARY, PING])
            self.assertEqual(frames[0].payload(), b'{"type":"x"}')

    def test_limits_are_checked_from_the_header(self) -> None:
        big = client_frame(BINARY, b"x" * 1000)
        _, error = FrameReader(masked=True, max_message=999).feed(big[:14])  # before the payload arrives
        self.assertEqual(error and error.code, 1009)
        fragments = client_frame(TEXT, b"a", fin=False) + client_frame(CONTINUATION, b"b", fin=False) + client_frame(CONTINUATION, b"c")
        frames, error = FrameReader(masked=True, max_fragments=2).feed(fragments)
        self.assertEqual((len(frames), error and error.code), (2, 1009))  # the frames before the third still count

    def test_after_a_failure_the_rest_is_skipped_not_held_and_the_close_reply_found(self) -> None:
        reader = FrameReader(masked=True, max_message=1000)
        big = client_frame(BINARY, b"x" * 100_000)
        frames, error = reader.feed(big[:5000])
        self.assertEqual((frames, error and error.code), ([], 1009))
        for start in range(5000, len(big), 5000):
            self.assertEqual(reader.feed(big[start:start + 5000]), ([], None))
            self.assertLess(reader._have, 5000)  # nothing of the oversized frame is kept
        close = client_frame(0x8, struct.pack("!H", 1009))
        frames, error = reader.feed(close)
        self.assertEqual(([f.raw for f in frames], error), ([close], None))

    def test_protocol_errors(self) -> None:
        for data, masked in (
            (bytes([0x81, 0x01]) + b"a", True),  # unmasked client frame
            (client_frame(TEXT, b"a"), False),  # masked server frame
            (bytes([0xC1, 0x80]) + b"abcd", True),  # RSV1 without an extension
            (client_frame(0x3, b""), True),  # reserved opcode
            (client_frame(PING, b"x" * 126), True),  # oversized control frame
            (client_frame(PING, b"", fin=False), True),  # fragmented control frame
            (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), True),  # new message inside one
        ):
            _, error = FrameReader(masked=masked).feed(data)
            self.assertIsInstance(error, FrameError)
            self.assertEqual(error and error.code, 1002, data)
