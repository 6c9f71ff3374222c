"""
promptGuard and prompts inside live Realtime sessions, both ways: client
events masked or refused in-protocol (with the client's event_id), input
transcripts checked, the provider's text deltas windowed per response (a
block cancels that response by id, its usage still metered), instructions
enriched, model aliases on ?model=; through the openai SDK and a raw
WebSocket client, against the fake provider.
"""

from __future__ import annotations

import io
import json
from typing import Any

import yaml
from openai import OpenAI
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.metering import AccessLog
from agw.testing import FakeGuardrailWebhook
from tests.support import (
    BACKEND_KEY,
    guard_check_counts,
    listening_fake,
    open_client,
    recv_event,
    registry_samples,
    running_gateway,
    wait_until,
)

ENV = {"OPENAI_API_KEY": BACKEND_KEY}
CARD = "4111 1111 1111 1111"


def realtime_config(upstream_port: int, ai: dict[str, Any]) -> str:
    """One Realtime (and completions) route to the fake, with C{ai} merged into its policies.ai."""
    return yaml.safe_dump({
        "config": {"statsAddr": "127.0.0.1:0", "readinessAddr": "127.0.0.1:0", "adminAddr": "127.0.0.1:0"},
        "binds": [{"port": 0, "listeners": [{"routes": [{
            "backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}, "hostOverride": f"127.0.0.1:{upstream_port}"}}],
            "policies": {
                "ai": {"routes": {"/v1/realtime": "realtime", "/v1/chat/completions": "completions"}, **ai},
                "backendAuth": {"key": "$OPENAI_API_KEY"},
            },
        }]}]}],
    })


MASKING = {"regex": {"action": "mask", "rules": [{"builtin": "email"}, {"builtin": "ssn"}, {"builtin": "creditCard"}]}}
FORBIDDEN = {"regex": {"action": "reject", "rules": [{"pattern": "(?i)plutonium"}]}, "rejection": {"body": "Not that topic."}}
VOICE_AGENT = {
    "prompts": {"prepend": [{"role": "system", "content": "You are a support agent."}]},
    "modelAliases": {"voice": "gpt-realtime"},
    "promptGuard": {"streaming": "Enabled", "request": [MASKING, FORBIDDEN], "response": [MASKING]},
}


def user_text(text: str, event_id: str | None = None) -> dict[str, Any]:
    event = {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}
    return {**event, "event_id": event_id} if event_id else event


class RealtimeGuardCase(TestCase):
    ai: dict[str, Any] = VOICE_AGENT

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        self.fake.output_items = True
        self.log = io.StringIO()
        self.gateway, _, self.port = yield running_gateway(self, realtime_config(upstream_port, self.ai), ENV, access_log=AccessLog(self.log))
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=voice"

    def received(self) -> list[dict[str, Any]]:
        """Every event the provider got, decoded."""
        return [json.loads(payload) for payload in self.fake.received]

    def received_text(self) -> str:
        return "\n".join(payload.decode("utf-8", "replace") for payload in self.fake.received)

    def session(self, script: Any) -> Any:
        """Run C{script(ws)} with a raw WebSocket client in a thread, after session.created."""
        def run() -> Any:
            ws = open_client(self.url)
            try:
                self.assertEqual(recv_event(ws)["type"], "session.created")
                return script(ws)
            finally:
                ws.close()

        return deferToThread(run)

    def guard_checks(self) -> dict[tuple[str, ...], float]:
        return guard_check_counts(self.gateway, "phase", "action")


def until(ws: Any, kind: str, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read events up to the first of C{kind} (each one read goes to C{seen})."""
    while True:
        event = recv_event(ws)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind:
            return event


def delivered_text(events: list[dict[str, Any]]) -> str:
    """Everything the client was shown of the responses' text: deltas, done texts, parts, items, response.done output."""
    return json.dumps([e for e in events if e["type"].startswith(("response.", "conversation.item."))])


class ClientEventTests(RealtimeGuardCase):
    @inlineCallbacks
    def test_the_sdk_session_is_masked_before_the_provider_sees_it(self) -> Any:
        def run() -> list[Any]:
            client = OpenAI(api_key="sk-client", websocket_base_url=f"ws://127.0.0.1:{self.port}/v1")
            with client.realtime.connect(model="voice") as connection:
                connection.session.update(session={"type": "realtime", "instructions": "Escalate to boss@example.com"})
                connection.conversation.item.create(item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "I am jo@example.com, SSN 123-45-6789"}],
                })
                connection.response.create(response={"instructions": "Mail ops@example.org", "output_modalities": ["text"]})
                done = next(event for event in connection if event.type == "response.done")
                connection.input_audio_buffer.commit()  # the user spoke: its transcript comes back masked
                transcript = next(e for e in connection if e.type == "conversation.item.input_audio_transcription.completed")
                return [done, transcript]

        self.fake.transcription_usage = {"type": "tokens", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        self.fake.transcript = "reach me at sam@example.net, SSN 123-45-6789"
        done, transcript = yield deferToThread(run)
        self.assertEqual(done.response.status, "completed")
        self.assertEqual(transcript.transcript, "reach me at <EMAIL_ADDRESS>, SSN <SSN>")
        text = self.received_text()
        for secret in ("boss@example.com", "jo@example.com", "123-45-6789", "ops@example.org"):
            self.assertNotIn(secret, text)
        update = next(e for e in self.received() if e["type"] == "session.update" and "Escalate" in e["session"].get("instructions", ""))
        self.assertEqual(update["session"]["instructions"], "You are a support agent.\n\nEscalate to <EMAIL_ADDRESS>")
        item = next(e for e in self.received() if e["type"] == "conversation.item.create")
        self.assertEqual(item["item"]["content"][0]["text"], "I am <EMAIL_ADDRESS>, SSN <SSN>")
        create = next(e for e in self.received() if e["type"] == "response.create")
        self.assertEqual(create["response"]["instructions"], "Mail <EMAIL_ADDRESS>")
        self.assertEqual(self.fake.handshakes[0].uri, "/v1/realtime?model=gpt-realtime")  # modelAliases
        self.assertEqual(self.guard_checks()[("request", "mask")], 4.0)  # instructions twice, the item, the transcript

    @inlineCallbacks
    def test_a_forbidden_word_is_refused_with_the_clients_event_id_and_the_session_goes_on(self) -> Any:
        def script(ws: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            ws.send(json.dumps(user_text("Where can I buy plutonium?", "evt_client_7")))
            error = until(ws, "error")
            ws.send(json.dumps(user_text("Hello there")))
            ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            return error, until(ws, "response.done")

        error, done = yield self.session(script)
        self.assertEqual(error["error"], {
            "type": "guardrail_blocked", "code": "guardrail_intervention", "message": "Not that topic.", "param": None,
            "event_id": "evt_client_7",
        })
        self.assertEqual(done["response"]["status"], "completed")
        self.assertNotIn("plutonium", self.received_text())
        self.assertIn("Hello there", self.received_text())
        self.assertEqual(self.guard_checks()[("request", "reject")], 1.0)
        [line] = [json.loads(line) for line in self.log.getvalue().splitlines() if '"realtime.guardrail"' in line]
        self.assertEqual(
            (line["agw.guardrail.action"], line["agw.guardrail.guard"], line["realtime.event_id"]),
            ("reject", "promptGuard.request[1]", "evt_client_7"),
        )
        yield wait_until(lambda: '"realtime.session"' in self.log.getvalue())
        [ended] = [json.loads(line) for line in self.log.getvalue().splitlines() if '"realtime.session"' in line]
        self.assertEqual((ended["agw.guardrail.action"], ended["agw.guardrail.guard"]), ("reject", "promptGuard.request[1]"))

    @inlineCallbacks
    def test_a_fragmented_event_is_read_whole_and_masked(self) -> Any:
        payload = json.dumps(user_text("card " + CARD))
        pieces = [payload[i:i + 7] for i in range(0, len(payload), 7)]

        def script(ws: Any) -> dict[str, Any]:
            ws.send(pieces)  # one message in many frames
            return until(ws, "conversation.item.created")

        created = yield self.session(script)
        self.assertEqual(created["item"]["content"][0]["text"], "card <CREDIT_CARD>")
        self.assertNotIn("4111", self.received_text())

    @inlineCallbacks
    def test_a_key_written_twice_reaches_the_provider_once_as_checked(self) -> Any:
        # Decoders disagree on which of two "item" keys counts: the provider gets the one agw checked, alone.
        first = json.dumps(user_text("SSN 123-45-6789")["item"])
        raw = '{"type":"conversation.item.create","item":%s,"item":%s}' % (first, json.dumps(user_text("plain")["item"]))

        def script(ws: Any) -> dict[str, Any]:
            ws.send(raw)
            return until(ws, "conversation.item.created")

        yield self.session(script)
        self.assertNotIn("123-45-6789", self.received_text())

    @inlineCallbacks
    def test_an_unparseable_event_is_refused(self) -> Any:
        def script(ws: Any) -> dict[str, Any]:
            ws.send('{"type": "conversation.item.create", "item": ')
            return until(ws, "error")

        error = yield self.session(script)
        self.assertEqual(error["error"]["code"], "guardrail_unreadable")
        # Only agw's own session.update (prompts) reached the provider.
        self.assertEqual([e["event_id"][:10] for e in self.received()], ["event_agw_"])

    @inlineCallbacks
    def test_audio_appends_pass_as_they_came(self) -> Any:
        append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 64})

        def script(ws: Any) -> None:
            ws.send(append)
            ws.send(json.dumps(user_text("after the audio")))  # in order: the append is there once this is
            until(ws, "conversation.item.created")

        yield self.session(script)
        self.assertIn(append.encode(), self.fake.received)


class PromptTests(RealtimeGuardCase):
    ai = {"prompts": {"prepend": [{"role": "system", "content": "Be brief."}], "append": [{"role": "system", "content": "Never promise refunds."}]}}

    @inlineCallbacks
    def test_a_session_whose_client_sets_no_instructions_gets_them_once(self) -> Any:
        def script(ws: Any) -> None:
            until(ws, "session.updated")  # the answer to agw's own update
            ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            until(ws, "response.done")

        yield self.session(script)
        updates = [e for e in self.received() if e["type"] == "session.update"]
        self.assertEqual([u["session"] for u in updates], [{"instructions": "Be brief.\n\nNever promise refunds.", "type": "realtime"}])


class OutputTests(RealtimeGuardCase):
    ai = {"promptGuard": {"streaming": "Enabled", "response": [
        {"regex": {"action": "reject", "rules": [{"builtin": "creditCard"}]}},
        {"regex": {"action": "mask", "rules": [{"builtin": "email"}]}},
    ]}}

    @inlineCallbacks
    def test_a_card_split_over_deltas_never_reaches_the_client_and_only_its_response_is_cancelled(self) -> Any:
        self.fake.response_delay = 30.0  # each response stays open until its cancel (or the session's end)
        self.fake.replies = [("All ", "good, write to ", "help@example.com", " anytime."), ("Your card: 4111 11", "11 1111 ", "1111, ok?")]

        def script(ws: Any) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            for _ in range(2):  # two concurrent out-of-band responses
                ws.send(json.dumps({"type": "response.create", "response": {"conversation": "none", "output_modalities": ["text"]}}))
            until(ws, "error", seen)
            until(ws, "response.done", seen)
            before_leaving.extend(json.loads(p) for p in list(self.fake.received))  # the client's leave cancels resp_1 too
            return seen

        before_leaving: list[dict[str, Any]] = []
        seen = yield self.session(script)
        blocked = next(e for e in seen if e["type"] == "error")
        self.assertEqual((blocked["error"]["type"], blocked["error"]["response_id"]), ("guardrail_blocked", "resp_2"))
        cancels = [e for e in before_leaving if e["type"] == "response.cancel"]
        self.assertEqual(cancels, [{"type": "response.cancel", "response_id": "resp_2"}])
        done = next(e for e in seen if e["type"] == "response.done")
        self.assertEqual((done["response"]["id"], done["response"]["status"]), ("resp_2", "cancelled"))
        shown = delivered_text(seen)
        for digits in ("4111", "1111"):
            self.assertNotIn(digits, shown)
        self.assertNotIn("help@example.com", shown)
        self.assertIn("<EMAIL_ADDRESS>", shown)
        # Still metered: the cancelled response's usage is in the metrics, as billed. The client's leave cancels
        # resp_1 too (its drain): both are billed, and agw meters each as its response.done arrives.
        def billed() -> float:
            return sum(b.usage["output_tokens"] for b in self.fake.ledger if b.operation == "chat")

        def tokens() -> float:
            return sum(
                value for (name, labels), value in registry_samples(self.gateway.metrics.registry).items()
                if name == "agentgateway_gen_ai_client_token_usage_sum" and dict(labels)["gen_ai_token_type"] == "output"
            )

        yield wait_until(lambda: len([b for b in self.fake.ledger if b.operation == "chat"]) == 2 and tokens() == billed())
        self.assertEqual(tokens(), billed())
        self.assertEqual(self.guard_checks()[("response", "reject")], 1.0)

    @inlineCallbacks
    def test_the_whole_text_events_agree_with_the_masked_deltas(self) -> Any:
        self.fake.reply_deltas = ("Mail me at ", "jo@exa", "mple.com", ". Bye")

        def script(ws: Any) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            until(ws, "response.done", seen)
            return seen

        seen = yield self.session(script)
        deltas = "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
        self.assertEqual(deltas, "Mail me at <EMAIL_ADDRESS>. Bye")
        done_text = next(e for e in seen if e["type"] == "response.output_text.done")["text"]
        self.assertEqual(done_text, deltas)
        output = next(e for e in seen if e["type"] == "response.done")["response"]["output"]
        self.assertEqual(output[0]["content"][0]["text"], deltas)
        self.assertNotIn("jo@", delivered_text(seen))


class TranscriptTests(RealtimeGuardCase):
    ai = {"promptGuard": {"request": [{"regex": {"action": "reject", "rules": [{"builtin": "ssn"}]}}]}}

    @inlineCallbacks
    def check_blocked_turn(self) -> Any:
        self.fake.server_vad = True
        self.fake.response_delay = 30.0
        self.fake.transcription_usage = {"type": "tokens", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        self.fake.transcript = "my social is 123-45-6789"

        def script(ws: Any) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            until(ws, "response.done", seen)
            return seen

        seen = yield self.session(script)
        self.assertNotIn("123-45-6789", json.dumps(seen))
        item_id = next(e for e in seen if e["type"] == "input_audio_buffer.committed")["item_id"]
        error = next(e for e in seen if e["type"] == "error")
        self.assertEqual(error["error"]["code"], "guardrail_intervention")
        self.assertEqual(error["error"]["item_id"], item_id)
        sent = [e for e in self.received() if e["type"] in ("response.cancel", "conversation.item.delete")]
        self.assertIn({"type": "conversation.item.delete", "item_id": item_id}, sent)
        self.assertIn({"type": "response.cancel", "response_id": "resp_1"}, sent)
        done = next(e for e in seen if e["type"] == "response.done")
        self.assertEqual(done["response"]["status"], "cancelled")

    def test_a_blocked_transcript_before_its_response_starts(self) -> Any:
        return self.check_blocked_turn()

    def test_a_blocked_transcript_after_its_response_started(self) -> Any:
        self.fake.transcript_after_response = True
        return self.check_blocked_turn()


class TranscriptHoldTests(RealtimeGuardCase):
    ai = {"promptGuard": {"holdForTranscript": "5s", "request": [{"regex": {"action": "reject", "rules": [{"builtin": "ssn"}]}}]}}

    def turn(self, transcript: str) -> Any:
        self.fake.server_vad = True
        self.fake.transcript_after_response = True  # as OpenAI: the answer starts before the transcript is known
        self.fake.transcription_usage = {"type": "tokens", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        self.fake.transcript = transcript

        def script(ws: Any) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            until(ws, "conversation.item.input_audio_transcription.completed" if "123" not in transcript else "error", seen)
            ws.send(json.dumps(user_text("marker")))
            until(ws, "conversation.item.created", seen)
            return seen

        return self.session(script)

    @inlineCallbacks
    def test_the_answer_waits_for_a_transcript_that_passes(self) -> Any:
        seen = yield self.turn("what time is it")
        kinds = [e["type"] for e in seen]
        # The transcript first, then the whole answer (held until then), audio included.
        at = kinds.index("conversation.item.input_audio_transcription.completed")
        self.assertEqual(kinds[at + 1], "response.created")
        self.assertIn("response.output_audio.delta", kinds[at:])
        self.assertIn("response.done", kinds[at:])

    @inlineCallbacks
    def test_an_answer_to_a_blocked_transcript_never_reaches_the_client(self) -> Any:
        self.fake.response_delay = 30.0
        seen = yield self.turn("my ssn is 123-45-6789")
        kinds = [e["type"] for e in seen]
        self.assertNotIn("response.created", kinds)
        self.assertFalse([k for k in kinds if k.startswith("response.")])
        self.assertIn({"type": "response.cancel", "response_id": "resp_1"}, self.received())


class GuardBackendTests(RealtimeGuardCase):
    """Webhook and moderation guards inside a session: in order, and failing closed when their service is down."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.webhook = FakeGuardrailWebhook(reject_words={"lottery"}, masks={"[Pp]roject [A-Z][a-z]+": "<PROJECT>"})
        listening = yield self.webhook.listen(reactor)
        self.addCleanup(listening.stopListening)
        fake, port = yield listening_fake(self)
        self.ai = {"promptGuard": {"request": [
            {"webhook": {"target": {"host": f"127.0.0.1:{listening.getHost().port}"},
                         "forwardHeaderMatches": [{"name": "x-tenant", "value": {"exact": "acme"}}], "timeout": "5s"}},
            {"openAIModeration": {"url": f"http://127.0.0.1:{port}/v1/moderations", "failureMode": "failClosed",
                                  "policies": {"backendAuth": {"key": "sk-moderation"}}}},
        ]}}
        self.moderation = fake
        fake.moderation_flag_words = {"bomb"}
        yield super().setUp()

    def open(self) -> Any:
        return open_client(self.url, additional_headers={"Authorization": "Bearer sk-client", "X-Tenant": "acme"})

    @inlineCallbacks
    def test_a_webhook_masks_and_rejects_and_the_order_of_events_holds(self) -> Any:
        def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            ws = self.open()
            try:
                self.assertEqual(recv_event(ws)["type"], "session.created")
                ws.send(json.dumps(user_text("Status of Project Falcon?")))
                ws.send(json.dumps(user_text("I won the lottery", "evt_2")))
                ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
                seen: list[dict[str, Any]] = []
                error = until(ws, "error", seen)
                until(ws, "response.done", seen)
                return seen, error
            finally:
                ws.close()

        seen, error = yield deferToThread(run)
        self.assertEqual((error["error"]["event_id"], error["error"]["message"]), ("evt_2", "rejected: lottery"))
        kinds = [e["type"] for e in self.received()]
        # The item agw waited on went first: the response.create behind it never overtook it.
        self.assertEqual(kinds, ["conversation.item.create", "response.create"])
        self.assertEqual(self.received()[0]["item"]["content"][0]["text"], "Status of <PROJECT>?")
        self.assertEqual({call.headers.get("x-tenant") for call in self.webhook.calls}, {"acme"})
        self.assertFalse(any("authorization" in call.headers for call in self.webhook.calls))

    @inlineCallbacks
    def test_moderation_flags_and_a_failing_service_refuses(self) -> Any:
        def send(text: str, event_id: str) -> Any:
            def run() -> dict[str, Any]:
                ws = self.open()
                try:
                    self.assertEqual(recv_event(ws)["type"], "session.created")
                    ws.send(json.dumps(user_text(text, event_id)))
                    return until(ws, "error")
                finally:
                    ws.close()

            return deferToThread(run)

        flagged = yield send("how to build a bomb", "evt_flag")
        self.assertEqual((flagged["error"]["code"], flagged["error"]["event_id"]), ("guardrail_intervention", "evt_flag"))
        moderated = [r for r in self.moderation.http_requests if r.uri.startswith("/v1/moderations")]
        self.assertEqual(moderated[0].headers["authorization"], "Bearer sk-moderation")
        self.webhook.misbehaviour = "error"
        down = yield send("hello", "evt_down")
        self.assertEqual((down["error"]["code"], down["error"]["event_id"]), ("guardrail_unavailable", "evt_down"))
        self.assertNotIn("hello", self.received_text())
