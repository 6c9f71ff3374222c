"""
Client events as governance reads them: an event that names its type more
than once is taken as any of the types it names.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from agw.metering import client_event_id, client_event_types, decode_event, sole_event_type

APPEND = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(os.urandom(4800)).decode()}, separators=(",", ":"),
).encode()


class SoleEventTypeTests(SynchronousTestCase):
    """The pass-through's test: may this event go on as it came, on what its head says?"""

    def test_events_that_name_their_type_once(self) -> None:
        self.assertEqual(sole_event_type(APPEND), "input_audio_buffer.append")
        self.assertEqual(sole_event_type(bytearray(APPEND)), "input_audio_buffer.append")  # a scratch copy
        self.assertEqual(sole_event_type(b'{"type":"response.create"}'), "response.create")
        self.assertEqual(sole_event_type(b'{ "type" : "input_audio_buffer.commit", "event_id": "e1"}'), "input_audio_buffer.commit")
        # The word in a value is not a "type" token.
        self.assertEqual(sole_event_type(b'{"type":"x","note":"this type of thing"}'), "x")

    def test_a_type_that_may_come_again_is_not_trusted(self) -> None:
        for payload in (
            b'{"type":"conversation.item.create","x":1,"type":"response.create"}',
            b'{"type":"input_audio_buffer.append","audio":"AAAA","type":"response.create"}',
            b'{"type":"x" , "type" :"response.create"}',
            # A key spelled with escapes is the same key to a decoder: any backslash counts.
            b'{"type":"input_audio_buffer.append","audio":"AAAA","\\u0074ype":"response.create"}',
            b'{"type":"x","t\\u0079pe":"response.create"}',
            # Erring on the safe side: a nested type, or "type" as a value, is read whole too.
            b'{"type":"conversation.item.create","item":{"type":"message"}}',
            b'{"type":"x","note":"type"}',
        ):
            self.assertIsNone(sole_event_type(payload), payload)

    def test_a_head_that_does_not_say_its_type(self) -> None:
        self.assertIsNone(sole_event_type(b'{"event_id":"e","type":"response.create"}'))
        self.assertIsNone(sole_event_type(b"not json"))
        self.assertIsNone(sole_event_type(b'{"type":"' + b"x" * 200 + b'"}'))  # not within the head


class ClientEventTypesTests(SynchronousTestCase):
    """Governance's test: C{"response.create" in client_event_types(payload)}."""

    def test_every_top_level_type_in_order(self) -> None:
        self.assertEqual(
            client_event_types(b'{"type":"conversation.item.create","x":1,"type":"response.create"}'),
            ("conversation.item.create", "response.create"),
        )
        # The mirror: json.loads alone would see only the last one.
        self.assertEqual(
            client_event_types(b'{"event_id":"e","type":"response.create","type":"conversation.item.create"}'),
            ("response.create", "conversation.item.create"),
        )
        self.assertEqual(
            client_event_types(b'{"type":"session.update","\\u0074ype":"response.create"}'), ("session.update", "response.create"),
        )

    def test_one_type(self) -> None:
        self.assertEqual(client_event_types(b'{"type":"response.create"}'), ("response.create",))
        self.assertEqual(client_event_types(b'{"response":{"type":"x"},"type":"response.create"}'), ("response.create",))
        self.assertEqual(
            client_event_types(b'{"type":"conversation.item.create","item":{"type":"response.create"}}'),
            ("conversation.item.create",),  # nested types are not the event's
        )

    def test_audio_appends_are_not_decoded(self) -> None:
        self.assertEqual(client_event_types(APPEND), ("input_audio_buffer.append",))
        # Its head is enough: a cut-off append would not even decode.
        self.assertEqual(client_event_types(APPEND[:-100]), ("input_audio_buffer.append",))

    def test_no_type(self) -> None:
        for payload in (
            b"not json", b'"response.create"', b'[["type","response.create"]]', b'{"type":["response.create"]}',
            b'{"event_id":"e"}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
        ):
            self.assertEqual(client_event_types(payload), (), payload[:40])


class DeepNestingTests(SynchronousTestCase):
    def test_too_deep_to_decode_is_not_an_event(self) -> None:
        """json.loads raises RecursionError, not ValueError, on deep nesting: raised from onMessage it would drop the session."""
        deep = b'{"type":"response.create","event_id":"e","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        self.assertIsNone(decode_event(deep))
        self.assertIsNone(client_event_id(deep))
        self.assertEqual(client_event_types(deep), ("response.create",))  # from its head: governed all the same
