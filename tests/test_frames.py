"""
The relay's own frame writing (agw.realtime.frames) produces the bytes
RFC 6455 and Autobahn do; the relay tests then run every message through it.
"""

from __future__ import annotations

import os

from autobahn.websocket.xormasker import create_xor_masker
from twisted.trial.unittest import SynchronousTestCase

from agw import _internals
from agw._internals import frame_header, mask_payload, masked_copy
from agw.realtime._frames import TEXT, Frame


class FrameHeaderTests(SynchronousTestCase):
    def test_rfc_6455_examples(self) -> None:
        # RFC 6455 section 5.7.
        self.assertEqual(frame_header(0x81, 5, 0) + b"Hello", bytes.fromhex("810548656c6c6f"))
        self.assertEqual(frame_header(0x82, 256, 0), bytes.fromhex("827e0100"))
        self.assertEqual(frame_header(0x82, 65536, 0), bytes.fromhex("827f0000000000010000"))
        mask = bytes.fromhex("37fa213d")
        masked = frame_header(0x81, 5, 0x80) + mask + mask_payload(mask, b"Hello")
        self.assertEqual(masked, bytes.fromhex("818537fa213d7f9f4d5158"))

    def test_length_boundaries(self) -> None:
        self.assertEqual(frame_header(0x81, 125, 0x80), bytes([0x81, 0x80 | 125]))
        self.assertEqual(frame_header(0x81, 126, 0), bytes([0x81, 126, 0, 126]))
        self.assertEqual(frame_header(0x81, 0xFFFF, 0), bytes([0x81, 126, 0xFF, 0xFF]))
        self.assertEqual(frame_header(0x81, 0x10000, 0)[:2], bytes([0x81, 127]))


class MaskTests(SynchronousTestCase):
    def test_same_as_autobahn_on_both_sides_of_the_size_switch(self) -> None:
        for length in (0, 1, 3, 4, 5, 125, 255, 256, 257, 1023, 1024, 1025, 70_000):
            payload, mask = os.urandom(length), os.urandom(4)
            expected = create_xor_masker(mask, length).process(payload) if length else b""
            masked = mask_payload(mask, payload)
            self.assertEqual((type(masked), masked), (bytes, expected), length)  # bytes: Autobahn's sendMessage asserts it
            self.assertEqual(masked_copy(mask, memoryview(payload)), expected, length)

    def test_without_the_compiled_masker(self) -> None:
        """Autobahn built without NVX (or a renamed module): its own masker is used."""
        self.patch(_internals, "_nvx", None)
        self.test_same_as_autobahn_on_both_sides_of_the_size_switch()

    def test_a_frame_s_scratch_payload_is_its_payload(self) -> None:
        for length in (5, 300, 5000):
            payload, mask = os.urandom(length), os.urandom(4)
            frame = Frame(True, TEXT, mask, b"\x81\xfe" + length.to_bytes(2, "big") + mask + mask_payload(mask, payload), 8)
            self.assertEqual((frame.payload(), frame.scratch_payload()), (payload, payload))

    def test_masking_twice_gives_the_payload_back(self) -> None:
        payload, mask = b"\x00" * 7 + b"\xff" * 9, os.urandom(4)
        self.assertEqual(mask_payload(mask, mask_payload(mask, payload)), payload)
