"""
agw's UTF-8 validator agrees with Autobahn's, chunk by chunk (Autobahn
calls it once per frame, or per piece of a frame).
"""

from __future__ import annotations

import random

from autobahn.websocket.utf8validator import Utf8Validator
from twisted.trial.unittest import SynchronousTestCase

from agw.realtime import DecoderUtf8Validator

SAMPLES = [
    b"",
    b'{"type":"input_audio_buffer.append","audio":"AAAA"}',
    "κόσμε, 日本語, 🎧".encode(),
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # a surrogate (Autobahn|Testsuite 6.4.x)
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xc0\xaf",  # overlong
    b"\xe2\x82",  # ends inside a code point
    b"abc\xff",
]


def outcome(validator: object, chunks: list[bytes]) -> tuple[bool, bool, int]:
    """(valid, ends on a code point, chunk index of the first failure or -1)."""
    validator.reset()  # type: ignore[attr-defined]
    ends = True
    for i, chunk in enumerate(chunks):
        valid, ends, _, _ = validator.validate(chunk)  # type: ignore[attr-defined]
        if not valid:
            return False, False, i
    return True, ends, -1


class ValidatorTests(SynchronousTestCase):
    def test_agrees_with_autobahn_whole_and_byte_by_byte(self) -> None:
        ours, theirs = DecoderUtf8Validator(), Utf8Validator()
        for sample in SAMPLES:
            for chunks in ([sample], [sample[i:i + 1] for i in range(len(sample))]):
                self.assertEqual(outcome(ours, chunks), outcome(theirs, chunks), (sample, len(chunks)))

    def test_agrees_with_autobahn_on_random_input_in_random_pieces(self) -> None:
        rng = random.Random(6455)
        ours, theirs = DecoderUtf8Validator(), Utf8Validator()
        alphabet = [b"a", b"\x7f", b"\x80", b"\xbf", b"\xc2", b"\xdf", b"\xe0", b"\xed", b"\xef", b"\xf0", b"\xf4", b"\xf5", b"\xff"]
        for _ in range(3000):
            sample = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            cuts = sorted(rng.sample(range(len(sample) + 1), min(3, len(sample) + 1)))
            chunks = [sample[a:b] for a, b in zip([0, *cuts], [*cuts, len(sample)])]
            self.assertEqual(outcome(ours, chunks), outcome(theirs, chunks), chunks)

    def test_reports_where_it_failed(self) -> None:
        validator = DecoderUtf8Validator()
        self.assertEqual(validator.validate(b"ab"), (True, True, 2, 2))
        self.assertEqual(validator.validate(b"c\xff"), (False, False, 1, 3))
