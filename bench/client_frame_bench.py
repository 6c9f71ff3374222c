"""
CPU per client text frame of the pass-through's decision (RealtimeServerProtocol.wants_whole)
and of unmasking, in microseconds (timeit, best of 7), for the frames OpenAI SDKs send:
`{"type":"input_audio_buffer.append","audio":"<base64>"}` of 20 ms and 100 ms of 24 kHz PCM16
and of 36 KiB of PCM (48 KB on the wire), and a small event.

    python bench/client_frame_bench.py

"head only" is the check before repeated "type" keys were looked for (the type read from the first
160 bytes); "whole payload" is the current one (agw.metering.sole_event_type over the unmasked
payload). "Autobahn's masker" is create_xor_masker(...).process (what mask_payload called for
1 KiB and more before it called the compiled masker directly).
"""

from __future__ import annotations

import base64
import json
import os
import timeit
from collections.abc import Callable
from typing import Any

from autobahn.websocket.xormasker import create_xor_masker

from agw._internals import mask_payload
from agw.metering import EVENT_HEAD, leading_event_type
from agw.realtime._frames import TEXT, Frame
from agw.realtime._server import RealtimeServerProtocol

MASK = b"\x9a\x1b\x2c\x3d"


def client_frame(payload: bytes) -> Frame:
    """A masked, single-frame text message as the pass-through cuts it."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0xFF]) + n.to_bytes(8, "big")
    return Frame(True, TEXT, MASK, head + MASK + mask_payload(MASK, payload), len(head) + 4)


def append(pcm_bytes: int) -> bytes:
    audio = base64.b64encode(os.urandom(pcm_bytes)).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio}, separators=(",", ":")).encode()


def head_only(frame: Frame) -> bool:
    kind = leading_event_type(frame.payload(EVENT_HEAD))
    return kind is None or kind == "response.create"


def microseconds(call: Callable[[], Any], number: int = 20000) -> float:
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e6


def main() -> None:
    leg = RealtimeServerProtocol()
    leg.session = object()  # type: ignore[assignment]
    cases = [
        ("input_audio_buffer.commit", b'{"type":"input_audio_buffer.commit"}'),
        ("append, 20 ms", append(960)),
        ("append, 100 ms", append(4800)),
        ("append, 36 KiB PCM", append(36 * 1024)),
    ]
    print("| frame | payload | wants_whole, head only | wants_whole, whole payload | mask_payload | Autobahn's masker |")
    print("|---|---|---|---|---|---|")
    for name, payload in cases:
        frame = client_frame(payload)
        assert not head_only(frame) and not leg.wants_whole(frame)
        data = frame.raw[frame.start:]
        print(
            f"| {name} | {len(payload)} B | {microseconds(lambda: head_only(frame)):.2f} µs "
            f"| {microseconds(lambda: leg.wants_whole(frame)):.2f} µs "
            f"| {microseconds(lambda: mask_payload(MASK, data)):.2f} µs "
            f"| {microseconds(lambda: create_xor_masker(MASK, len(data)).process(data)):.2f} µs |"
        )


if __name__ == "__main__":
    main()
