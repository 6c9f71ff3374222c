"""Usage extraction: pure functions over GA event and body samples."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from agw.metering import (
    AudioDuration,
    TokenUsage,
    chat_completion_usage,
    decode_event,
    embeddings_usage,
    might_carry_usage,
    realtime_response_usage,
    realtime_transcription_usage,
    responses_usage,
    session_model,
)

RESPONSE_DONE = {
    "type": "response.done",
    "event_id": "event_1",
    "response": {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "usage": {
            "total_tokens": 225,
            "input_tokens": 150,
            "output_tokens": 75,
            "input_token_details": {
                "text_tokens": 100,
                "audio_tokens": 50,
                "image_tokens": 0,
                "cached_tokens": 64,
                "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": 25, "audio_tokens": 50},
        },
    },
}


class RealtimeUsageTests(SynchronousTestCase):
    def test_response_done(self) -> None:
        usage = realtime_response_usage(RESPONSE_DONE)
        self.assertEqual(
            usage,
            TokenUsage(
                input=150,
                output=75,
                cached_input=64,
                input_by_modality=(("text", 100), ("audio", 50), ("image", 0)),
                cached_by_modality=(("text", 64), ("audio", 0), ("image", 0)),
                output_by_modality=(("text", 25), ("audio", 50)),
            ),
        )

    def test_cached_is_reported_not_added(self) -> None:
        usage = realtime_response_usage(RESPONSE_DONE)
        assert usage is not None
        self.assertEqual(usage.input, 150)  # not 150 + 64

    def test_seed_minimal_usage(self) -> None:
        event = {"type": "response.done", "response": {"usage": {"total_tokens": 225, "input_tokens": 150, "output_tokens": 75}}}
        self.assertEqual(realtime_response_usage(event), TokenUsage(input=150, output=75))

    def test_cancelled_and_failed_responses_count(self) -> None:
        for status in ("cancelled", "failed", "incomplete"):
            event = {"type": "response.done", "response": {"status": status, "usage": {"input_tokens": 3, "output_tokens": 1}}}
            self.assertEqual(realtime_response_usage(event), TokenUsage(input=3, output=1))

    def test_missing_or_malformed_usage(self) -> None:
        self.assertIsNone(realtime_response_usage({"type": "response.done", "response": {}}))
        self.assertIsNone(realtime_response_usage({"type": "response.done", "response": None}))
        self.assertIsNone(realtime_response_usage({"type": "response.done"}))
        self.assertIsNone(realtime_response_usage({"type": "response.created", "response": {"usage": {"input_tokens": 1}}}))
        weird = {"type": "response.done", "response": {"usage": {"input_tokens": "12", "output_tokens": -4, "input_token_details": []}}}
        self.assertEqual(realtime_response_usage(weird), TokenUsage(input=0, output=0))

    def test_transcription_tokens_and_duration(self) -> None:
        tokens = {
            "type": "conversation.item.input_audio_transcription.completed",
            "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 5, "total_tokens": 19, "input_token_details": {"text_tokens": 0, "audio_tokens": 14}},
        }
        self.assertEqual(
            realtime_transcription_usage(tokens),
            TokenUsage(input=14, output=5, input_by_modality=(("text", 0), ("audio", 14)), output_by_modality=(("text", 5),)),
        )
        duration = {"type": "conversation.item.input_audio_transcription.completed", "usage": {"type": "duration", "seconds": 2.5}}
        self.assertEqual(realtime_transcription_usage(duration), AudioDuration(2.5))

    def test_session_model(self) -> None:
        self.assertEqual(session_model({"type": "session.created", "session": {"model": "gpt-realtime-2025-08-28"}}), "gpt-realtime-2025-08-28")
        self.assertEqual(session_model({"type": "session.updated", "session": {"model": "m"}}), "m")
        self.assertIsNone(session_model({"type": "session.created", "session": {}}))
        self.assertIsNone(session_model({"type": "response.done", "session": {"model": "m"}}))


class PrefilterTests(SynchronousTestCase):
    def test_interesting_events_pass(self) -> None:
        for event_type in ("response.done", "session.created", "session.updated", "conversation.item.input_audio_transcription.completed"):
            self.assertTrue(might_carry_usage(json.dumps({"type": event_type}).encode()))
            self.assertTrue(might_carry_usage(json.dumps({"type": event_type}, separators=(",", ":")).encode()))

    def test_deltas_are_skipped(self) -> None:
        self.assertFalse(might_carry_usage(b'{"type":"response.output_audio.delta","delta":"AAAA"}'))

    def test_type_read_from_the_head_when_it_comes_first(self) -> None:
        self.assertFalse(might_carry_usage(b'{"type":"response.output_audio.delta","item":{"type":"response.done"}}'))
        self.assertFalse(might_carry_usage(b'{ "type" : "response.done2", "x": "\\"response.done\\""}'))
        self.assertTrue(might_carry_usage(b'{ "type" : "response.done" , "response": {}}'))

    def test_type_found_anywhere_when_it_does_not_come_first(self) -> None:
        self.assertTrue(might_carry_usage(b'{"event_id":"event_1","response":{"status":"completed"},"type":"response.done"}'))
        self.assertTrue(might_carry_usage(b'{"event_id":"e","type":"session.updated"}'))
        self.assertFalse(might_carry_usage(b'{"event_id":"e","type":"response.output_audio.delta","delta":"AAAA"}'))

    def test_mentioning_the_name_in_text_is_skipped(self) -> None:
        payload = json.dumps({"type": "response.output_text.delta", "delta": 'say "response.done"'}).encode()
        self.assertFalse(might_carry_usage(payload))

    def test_decode_rejects_non_objects(self) -> None:
        self.assertIsNone(decode_event(b"not json"))
        self.assertIsNone(decode_event(b"\xff\xfe"))
        self.assertIsNone(decode_event(b"[1, 2]"))
        self.assertEqual(decode_event(b'{"type": "x"}'), {"type": "x"})


class HTTPUsageTests(SynchronousTestCase):
    def test_chat_completion(self) -> None:
        body = {
            "model": "gpt-4-0613",
            "usage": {
                "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0},
            },
        }
        usage = chat_completion_usage(body)
        assert usage is not None
        self.assertEqual((usage.input, usage.output, usage.cached_input), (19, 10, 8))  # reasoning not added
        self.assertEqual(usage.input_by_modality, (("text", 19), ("audio", 0)))

    def test_chat_audio_modality(self) -> None:
        usage = chat_completion_usage({"usage": {"prompt_tokens": 100, "completion_tokens": 50, "prompt_tokens_details": {"audio_tokens": 60}, "completion_tokens_details": {"audio_tokens": 45, "reasoning_tokens": 0}}})
        assert usage is not None
        self.assertEqual((usage.input_by_modality, usage.output_by_modality), ((("text", 40), ("audio", 60)), (("text", 5), ("audio", 45))))

    def test_streamed_chunk_without_usage(self) -> None:
        self.assertIsNone(chat_completion_usage({"choices": [{"delta": {"content": "hi"}}], "usage": None}))

    def test_embeddings(self) -> None:
        self.assertEqual(embeddings_usage({"usage": {"prompt_tokens": 8, "total_tokens": 8}}), TokenUsage(input=8, input_by_modality=(("text", 8),)))

    def test_responses_json_and_stream(self) -> None:
        usage = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0}}
        expected = TokenUsage(input=36, output=87, cached_input=4, input_by_modality=(("text", 36),), output_by_modality=(("text", 87),))
        self.assertEqual(responses_usage({"object": "response", "usage": usage}), expected)
        self.assertEqual(responses_usage({"type": "response.completed", "response": {"usage": usage}}), expected)
