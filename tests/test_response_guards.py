"""
promptGuard.response (regex): the pure decisions on answers and streamed
events as tables, the SSE framing fed in every cut, and a real gateway
masking and rejecting the fake provider's answers (JSON and SSE, chat and
Responses) while still metering what the provider billed.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from typing import Any

import treq
from openai import APIError, OpenAI, PermissionDeniedError
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import Gateway
from agw.config import Builtin, Guard, GuardAction, RegexGuard, RegexRule, Rejection, RouteType, Webhook, parse_config
from agw.decisions import StreamedAnswer, blocked_event, guard_answer, unguarded_streams
from agw.http._response_guard import GuardedSSE
from agw.metering import AccessLog, HTTPExchange
from tests.support import listening_fake, LoopbackClient, on_twisted_web, raw_exchange, registry_samples, running_gateway, token_sums
from tests.test_guardrails import ENV, config_text

CARD = Guard(regex=RegexGuard(rules=(RegexRule(builtin=Builtin.CREDIT_CARD),)))
FORBIDDEN = Guard(regex=RegexGuard(rules=(RegexRule(pattern=re.compile(r"(?i)\bforbidden\b")),), action=GuardAction.REJECT))
WEBHOOK = Guard(webhook=Webhook(host="127.0.0.1:9"))  # another helper's business: skipped here, its index kept
CARD_TEXT = ("My card is 4111 1111 ", "1111 1111, bye")
MASKED = "My card is <CREDIT_CARD>, bye"
# An answer that ends in the card: its digits are still held when the text ends.
CARD_LAST = ("My card is 4111 1111 ", "1111 1111")
MASKED_LAST = "My card is <CREDIT_CARD>"


def chat_chunk(content: str | None = None, finish: str | None = None, index: int = 0, **fields: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish, **fields}]}


def text_delta(delta: str, number: int, item: str = "msg_1") -> dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": item, "output_index": 0, "content_index": 0, "delta": delta, "sequence_number": number}


def contents(events: list[dict[str, Any]]) -> str:
    """The text a client reads from chat chunks and Responses deltas."""
    text = ""
    for event in events:
        if event.get("type") == "response.output_text.delta":
            text += event["delta"]
        for choice in event.get("choices") or ():
            text += choice.get("delta", {}).get("content") or ""
    return text


def through(answer: StreamedAnswer, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a client receives for C{events}: each as rewritten (or as it came), then what L{StreamedAnswer.end} adds."""
    out = []
    for event in events:
        original = json.loads(json.dumps(event))
        replaced = answer.event(event)
        out.extend([original] if replaced is None else replaced)
    return out + answer.end()


class GuardAnswerTests(SynchronousTestCase):
    def test_chat_content_strings_and_parts(self) -> None:
        body = {"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "card 4111 1111 1111 1111"}, "logprobs": {"content": [{"token": "4111"}]}},
            {"index": 1, "message": {"role": "assistant", "content": [{"type": "text", "text": "or 5500-0000-0000-0004"}]}},
            {"index": 2, "message": {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "4111111111111111"}}]}},
        ]}
        outcome = guard_answer(body, RouteType.COMPLETIONS, (WEBHOOK, CARD))
        self.assertEqual([(c.index, c.action) for c in outcome.checks], [(1, "mask")])  # the webhook guard is not run here
        self.assertEqual(body["choices"][0]["message"]["content"], "card <CREDIT_CARD>")
        self.assertEqual(body["choices"][1]["message"]["content"][0]["text"], "or <CREDIT_CARD>")
        self.assertIsNone(body["choices"][0]["logprobs"])  # it spelled the card token by token
        # Tool call arguments are not answer text (as agentgateway).
        self.assertEqual(body["choices"][2]["message"]["tool_calls"][0]["function"]["arguments"], "4111111111111111")

    def test_responses_output_text_only(self) -> None:
        body = {"output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "4111 1111 1111 1111"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "it is forbidden"}, {"type": "refusal", "refusal": "forbidden"}]},
        ]}
        outcome = guard_answer(body, RouteType.RESPONSES, (CARD, FORBIDDEN))
        self.assertEqual([(c.index, c.action) for c in outcome.checks], [(0, "allow"), (1, "reject")])
        self.assertEqual(outcome.rejection, FORBIDDEN.rejection)
        clean = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "fine"}]}]}
        outcome = guard_answer(clean, RouteType.RESPONSES, (CARD, FORBIDDEN))
        self.assertEqual(([(c.index, c.action) for c in outcome.checks], outcome.masked), ([(0, "allow"), (1, "allow")], False))


class StreamedAnswerTests(SynchronousTestCase):
    def test_a_card_split_across_chat_chunks_is_never_sent(self) -> None:
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 64)
        usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1}}
        out = through(answer, [chat_chunk(CARD_TEXT[0]), chat_chunk(CARD_TEXT[1]), chat_chunk(finish="stop"), usage])
        # The text before the card goes at once; the card's digits wait until it is whole.
        self.assertEqual([contents([event]) for event in out], ["My card is ", "<CREDIT_CARD>, bye", "", ""])
        self.assertEqual(out[-1], usage)  # passed as it came
        self.assertEqual([(c.index, c.action) for c in answer.checks], [(0, "mask")])

    def test_text_that_cannot_start_a_match_goes_at_once(self) -> None:
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 8)
        out = through(answer, [chat_chunk("Once upon a time there "), chat_chunk("was a card"), chat_chunk(finish="stop")])
        self.assertEqual([contents([event]) for event in out], ["Once upon a time there ", "was a card", ""])

    def test_at_most_the_hold_is_held(self) -> None:
        # Ten digits may be the start of a card number, but no more than holdChars (8) of them wait...
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 8)
        out = through(answer, [chat_chunk("n 1234 5678 90"), chat_chunk(finish="stop")])
        self.assertEqual([contents([event]) for event in out], ["n 1234", " 5678 90"])
        # ...while a whole match that may still grow is never released in part, however long.
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 8)
        out = through(answer, [chat_chunk("n 1234 5678 9012 3"), chat_chunk(finish="stop")])
        self.assertEqual([contents([event]) for event in out], ["n ", "1234 5678 9012 3"])

    def test_choices_have_a_text_each(self) -> None:
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 64)
        out = through(answer, [
            chat_chunk("4111 1111 ", index=0), chat_chunk("pay 4111 1111 ", index=1),
            chat_chunk("1111 1111", index=1), chat_chunk("9999", index=0),
        ])
        # No finish_reason: what each choice holds comes at the end, in a chunk of its own like the others.
        self.assertEqual(out[-2:], [
            {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "4111 1111 9999"}, "logprobs": None, "finish_reason": None}]},
            {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 1, "delta": {"content": "<CREDIT_CARD>"}, "logprobs": None, "finish_reason": None}]},
        ])

    def test_logprobs_are_dropped(self) -> None:
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 0)
        [chunk] = answer.event(chat_chunk("hi", logprobs={"content": [{"token": "hi"}]})) or []
        self.assertIsNone(chunk["choices"][0]["logprobs"])

    def test_a_rejection_blocks_the_rest(self) -> None:
        answer = StreamedAnswer(RouteType.COMPLETIONS, (CARD, FORBIDDEN), 4)
        self.assertEqual(contents(answer.event(chat_chunk("all fine, ")) or []), "all fi")
        self.assertEqual(answer.event(chat_chunk("but forbidden stuff follows")), [])
        self.assertEqual(answer.rejection, FORBIDDEN.rejection)
        self.assertEqual((answer.event(chat_chunk("more")), answer.end()), ([], []))
        self.assertEqual([(c.index, c.action) for c in answer.checks], [(0, "allow"), (1, "reject")])
        self.assertEqual(blocked_event(FORBIDDEN.rejection), {"error": {
            "type": "guardrail_blocked", "code": "guardrail_intervention",
            "message": "The request was rejected due to inappropriate content",
        }})
        self.assertEqual(blocked_event(Rejection(body="No."))["error"]["message"], "No.")

    def test_responses_deltas_and_the_texts_that_end_them(self) -> None:
        answer = StreamedAnswer(RouteType.RESPONSES, (CARD,), 64)
        final = {"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "".join(CARD_LAST), "logprobs": [{"token": "4"}]}]}
        out = through(answer, [
            {"type": "response.created", "sequence_number": 0, "response": {"output": []}},
            text_delta(CARD_LAST[0], 1), text_delta(CARD_LAST[1], 2),
            {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "".join(CARD_LAST), "sequence_number": 3},
            {"type": "response.content_part.done", "item_id": "msg_1", "part": final["content"][0], "sequence_number": 4},
            {"type": "response.output_item.done", "output_index": 0, "item": final, "sequence_number": 5},
            {"type": "response.completed", "sequence_number": 6, "response": {"output": [final]}},
        ])
        self.assertEqual(out[0], {"type": "response.created", "sequence_number": 0, "response": {"output": []}})
        self.assertEqual(contents(out), MASKED_LAST)
        # The held text comes in a delta added before the done event; later events move up by one.
        self.assertEqual(out[3], {**text_delta("<CREDIT_CARD>", 3), "logprobs": []})
        self.assertEqual([event["sequence_number"] for event in out], list(range(8)))
        self.assertEqual(out[4]["text"], MASKED_LAST)
        self.assertEqual(out[5]["part"]["text"], MASKED_LAST)
        self.assertEqual(out[6]["item"]["content"][0], {"type": "output_text", "text": MASKED_LAST, "logprobs": []})
        self.assertEqual(out[7]["response"]["output"][0]["content"][0]["text"], MASKED_LAST)
        self.assertNotIn("4111", json.dumps(out))

    def test_responses_completed_alone_ends_the_texts(self) -> None:
        # The fake's stream: deltas without item ids, then response.completed.
        answer = StreamedAnswer(RouteType.RESPONSES, (CARD,), 64)
        deltas = [{"type": "response.output_text.delta", "delta": piece} for piece in CARD_LAST]
        completed = {"type": "response.completed", "response": {"output": [{"content": [{"type": "output_text", "text": "".join(CARD_LAST)}]}]}}
        out = through(answer, [*deltas, completed])
        self.assertEqual(out[2], {"type": "response.output_text.delta", "delta": "<CREDIT_CARD>", "logprobs": []})
        self.assertEqual(out[3]["response"]["output"][0]["content"][0]["text"], MASKED_LAST)

    def test_a_final_text_that_rejects_blocks(self) -> None:
        # A match longer than the hold can slip through the deltas: the whole text is checked again.
        guard = Guard(regex=RegexGuard(rules=(RegexRule(pattern=re.compile(r"secret.{0,40}plan")),), action=GuardAction.REJECT))
        answer = StreamedAnswer(RouteType.RESPONSES, (guard,), 4)
        answer.event(text_delta("the secret of the ", 1))
        answer.event(text_delta("plan", 2))
        done = {"type": "response.output_text.done", "item_id": "msg_1", "content_index": 0, "text": "the secret of the plan"}
        self.assertEqual(answer.event(done), [])
        self.assertEqual(answer.rejection, guard.rejection)


def sse(*events: Any, named: bool = False) -> bytes:
    out = b""
    for event in events:
        if named and isinstance(event, dict):
            out += b"event: " + event["type"].encode() + b"\n"
        out += b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"
    return out


def decoded(stream: bytes) -> list[dict[str, Any]]:
    events = []
    for block in re.split(rb"\r\n\r\n|\n\n", stream):
        data = b"\n".join(line[5:].strip() for line in block.splitlines() if line.startswith(b"data:"))
        if data and data != b"[DONE]":
            events.append(json.loads(data))
    return events


class GuardedSSETests(SynchronousTestCase):
    stream = b": keep-alive\n\n" + sse(chat_chunk(CARD_TEXT[0]), chat_chunk(CARD_TEXT[1]), chat_chunk(finish="stop"), b"[DONE]")

    def run_stream(self, pieces: list[bytes], guards: tuple[Guard, ...] = (CARD,)) -> tuple[bytes, GuardedSSE, HTTPExchange]:
        exchange = HTTPExchange(b"/v1/chat/completions", 0.0)
        guarded = GuardedSSE(StreamedAnswer(RouteType.COMPLETIONS, guards, 64), exchange, 1 << 20)
        out = b"".join(guarded.feed(piece) for piece in pieces)
        return out + guarded.finish(True), guarded, exchange

    def test_every_cut_gives_the_same_stream(self) -> None:
        whole, _, exchange = self.run_stream([self.stream])
        self.assertEqual(contents(decoded(whole)), MASKED)
        self.assertTrue(whole.startswith(b": keep-alive\n\n") and whole.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(exchange.guard_checks, (("response", 0, "mask"),))
        for size in (1, 2, 3, 7):
            out, _, _ = self.run_stream([self.stream[i:i + size] for i in range(0, len(self.stream), size)])
            self.assertEqual(out, whole, size)
        crlf, _, _ = self.run_stream([self.stream.replace(b"\n", b"\r\n")])
        self.assertEqual(decoded(crlf), decoded(whole))

    def test_half_a_surrogate_pair_in_a_delta_is_sent_escaped(self) -> None:
        out, _, _ = self.run_stream([b'data: {"choices": [{"index": 0, "delta": {"content": "4111 1111 1111 1111 \\ud83d"}}]}\n\n'])
        self.assertIn(b'"content":"<CREDIT_CARD> \\ud83d"', out)  # rewritten (masked): the half pair escaped

    def test_a_block_ends_the_stream_with_the_error_event(self) -> None:
        stream = sse(chat_chunk("x " * 40), chat_chunk("forbidden " + "y" * 80), chat_chunk("z"), b"[DONE]")
        out, guarded, exchange = self.run_stream([stream], (CARD, FORBIDDEN))
        self.assertTrue(guarded.ended)
        self.assertEqual(decoded(out)[-1], blocked_event(FORBIDDEN.rejection))
        self.assertNotIn(b"forbidden", out)
        self.assertNotIn(b"[DONE]", out)  # as agentgateway: the error event is the last
        self.assertEqual(exchange.guard_checks, (("response", 0, "allow"), ("response", 1, "reject")))

    def test_a_broken_stream_sends_nothing_it_held(self) -> None:
        exchange = HTTPExchange(b"/", 0.0)
        guarded = GuardedSSE(StreamedAnswer(RouteType.COMPLETIONS, (CARD,), 64), exchange, 1 << 20)
        out = guarded.feed(sse(chat_chunk(CARD_TEXT[0])))
        self.assertEqual(contents(decoded(out + guarded.finish(False))), "My card is ")  # the digits it held: never
        self.assertEqual(exchange.guard_checks, (("response", 0, "allow"),))


class LogLines(io.StringIO):
    """An access log stream that says when a line arrives (the record of a request whose client already has its answer)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[Deferred[None]] = []

    def write(self, text: str) -> int:
        written = super().write(text)
        waiting, self._waiting = self._waiting, []
        for wait in waiting:
            wait.callback(None)
        return written

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]

    @inlineCallbacks
    def at_least(self, count: int) -> Any:
        while len(self.lines()) < count:
            wait: Deferred[None] = Deferred()
            self._waiting.append(wait)
            yield wait
        return self.lines()


REGEX_GUARDS = [
    {"regex": {"action": "mask", "rules": [{"builtin": "creditCard"}]}},
    {"regex": {"action": "reject", "rules": [{"pattern": "(?i)\\bforbidden\\b"}]}},
    {"regex": {"action": "reject", "rules": [{"pattern": "launch codes"}]},
     "rejection": {"status": 451, "body": "Not on this gateway.", "headers": {"set": {"x-guard": "codes"}}}},
]


class ResponseGuardCase(LoopbackClient, TestCase):
    ai: dict[str, Any] = {"promptGuard": {"streaming": "Enabled", "response": REGEX_GUARDS}}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        self.fake.reply_deltas = CARD_TEXT
        self.log = LogLines()
        self.gateway, _, self.port = yield running_gateway(self, config_text(self.upstream_port, self.ai), ENV, access_log=AccessLog(self.log))

    @inlineCallbacks
    def raw_post(self, path: str, body: dict[str, Any]) -> Any:
        """The response's head and body as they came (treq does not show a Content-Length)."""
        data = json.dumps(body).encode()
        request = b"POST %s HTTP/1.1\r\nHost: agw\r\nConnection: close\r\nContent-Type: application/json\r\n" % path.encode()
        raw = yield deferToThread(raw_exchange, self.port, request + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        head, _, content = raw.partition(b"\r\n\r\n")
        return head + b"\r\n", content

    def response_checks(self) -> dict[str, float]:
        return {
            dict(labels)["action"]: value
            for (name, labels), value in registry_samples(self.gateway.metrics.registry).items()
            if name == "agentgateway_guardrail_checks_total" and dict(labels)["phase"] == "response"
        }

    @inlineCallbacks
    def assert_metered(self) -> Any:
        """The one request is recorded with the usage the provider billed, in the log and the token metric."""
        [line] = yield self.log.at_least(1)
        [billed] = self.fake.ledger
        self.assertEqual(
            (line["gen_ai.usage.input_tokens"], line["gen_ai.usage.output_tokens"]),
            (billed.usage["input_tokens"], billed.usage["output_tokens"]),
        )
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(registry_samples(self.gateway.metrics.registry)))
        return line


class JSONAnswerTests(ResponseGuardCase):
    @inlineCallbacks
    def test_a_chat_answer_is_masked(self) -> Any:
        head, content = yield self.raw_post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(json.loads(content)["choices"][0]["message"]["content"], MASKED)
        self.assertIn(b"\r\ncontent-length: %d\r\n" % len(content), head.lower())
        line = yield self.assert_metered()
        self.assertEqual((line["agw.guardrail.action"], line["agw.guardrail.guard"]), ("mask", "promptGuard.response[0]"))
        self.assertEqual(self.response_checks(), {"mask": 1.0, "allow": 2.0})

    @inlineCallbacks
    def test_a_responses_answer_is_masked_for_the_sdk(self) -> Any:
        answer = yield self.sdk(lambda c: c.responses.create(model="m", input="card?"))
        self.assertEqual(answer.output_text, MASKED)
        yield self.assert_metered()

    @inlineCallbacks
    def test_a_chat_answer_is_rejected_and_still_metered(self) -> Any:
        self.fake.reply_deltas = ("This is ", "forbidden.")

        def ask(client: OpenAI) -> Any:
            with self.assertRaises(PermissionDeniedError) as raised:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            return raised.exception

        refused = yield self.sdk(ask)
        self.assertEqual(refused.body, {
            "message": "The request was rejected due to inappropriate content", "type": "invalid_request_error", "code": "guardrail_rejected",
        })
        line = yield self.assert_metered()  # the provider billed it: counted though the client got a 403
        self.assertEqual((line["http.status"], line["agw.guardrail.action"], line["agw.guardrail.guard"]), (403, "reject", "promptGuard.response[1]"))
        self.assertEqual(self.response_checks(), {"allow": 1.0, "reject": 1.0})

    @inlineCallbacks
    def test_a_configured_rejection_replaces_a_responses_answer(self) -> Any:
        self.fake.reply_deltas = ("the launch codes are 0000",)
        head, content = yield self.raw_post("/v1/responses", {"model": "m", "input": "codes?"})
        self.assertEqual((head.split(b" ")[1], content), (b"451", b"Not on this gateway."))
        self.assertIn(b"\r\nx-guard: codes\r\n", head.lower())
        self.assertIn(b"\r\ncontent-length: %d\r\n" % len(content), head.lower())
        self.assertNotIn(b"set-cookie", head.lower())  # the provider's answer is gone, its headers with it
        line = yield self.assert_metered()
        self.assertEqual(line["agw.guardrail.guard"], "promptGuard.response[2]")


def sse_bytes_text(content: bytes) -> str:
    return contents(decoded(content))


class StreamTests(ResponseGuardCase):
    @inlineCallbacks
    def test_a_card_split_across_chunks_never_reaches_the_client(self) -> Any:
        response, content = yield self.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []})
        self.assertEqual(response.code, 200)
        self.assertEqual(sse_bytes_text(content), MASKED)
        self.assertIsNone(re.search(rb"4111|1111", content))
        self.assertTrue(content.endswith(b"data: [DONE]\n\n"))
        self.assertNotIn(b'"usage"', content)  # agw asked for stream usage for itself: still removed
        line = yield self.assert_metered()
        self.assertEqual(line["agw.guardrail.action"], "mask")

    @inlineCallbacks
    def test_the_sdk_reads_masked_streams(self) -> Any:
        def ask(client: OpenAI) -> Any:
            chat = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True},
            ) if chunk.choices)
            events = list(client.responses.create(model="m", input="hi", stream=True))
            return chat, events

        chat, events = yield self.sdk(ask)
        self.assertEqual(chat, MASKED)
        self.assertEqual("".join(e.delta for e in events if e.type == "response.output_text.delta"), MASKED)
        self.assertEqual(events[-1].type, "response.completed")
        self.assertEqual(events[-1].response.output_text, MASKED)
        self.assertEqual(self.response_checks(), {"mask": 2.0, "allow": 4.0})

    @inlineCallbacks
    def test_a_responses_stream_is_masked_on_the_wire(self) -> Any:
        self.fake.reply_deltas = CARD_LAST
        response, content = yield self.post("/v1/responses", {"model": "m", "stream": True, "input": "hi"})
        self.assertIsNone(re.search(rb"4111|1111", content))
        events = decoded(content)
        self.assertEqual(contents(events), MASKED_LAST)
        # The added delta (the card, held to the end) is named like the provider's events.
        added = {"type": "response.output_text.delta", "delta": "<CREDIT_CARD>", "logprobs": []}
        self.assertIn(b"event: response.output_text.delta\ndata: " + json.dumps(added, separators=(",", ":")).encode(), content)
        yield self.assert_metered()

    @inlineCallbacks
    def test_a_blocked_stream_ends_with_the_error_and_is_metered(self) -> Any:
        self.fake.reply_deltas = ("We are going to do a ", "forbidden thing.")

        def ask(client: OpenAI) -> Any:
            received = []
            with self.assertRaises(APIError) as raised:
                for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
                    received.append(chunk)
            return received, raised.exception

        received, error = yield self.sdk(ask)
        self.assertEqual(error.message, "The request was rejected due to inappropriate content")
        self.assertEqual(error.body, {"type": "guardrail_blocked", "code": "guardrail_intervention", "message": error.message})
        self.assertNotIn("forbidden", "".join(c.choices[0].delta.content or "" for c in received if c.choices))
        line = yield self.assert_metered()
        self.assertEqual((line["http.status"], line["agw.guardrail.action"]), (200, "reject"))

    @inlineCallbacks
    def test_the_client_is_done_at_the_block_and_the_rest_is_read_for_usage(self) -> Any:
        self.fake.reply_deltas = ("Now a forbidden answer " + "x" * 80, " and more.")
        self.fake.stream_gate = gate = Deferred()  # the provider stops after its first chunk
        response, content = yield self.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []})
        self.assertEqual(decoded(content), [blocked_event(Rejection())])
        self.assertEqual(self.log.lines(), [])  # not over yet: the provider is still answering
        gate.callback(None)
        line = yield self.assert_metered()
        self.assertEqual(line["http.status"], 200)

    @inlineCallbacks
    def test_a_blocked_responses_stream_with_a_configured_rejection(self) -> Any:
        self.fake.reply_deltas = ("the launch ", "codes are 0000")
        response, content = yield self.post("/v1/responses", {"model": "m", "stream": True, "input": "hi"})
        self.assertEqual(response.code, 200)  # the stream had begun
        self.assertEqual(decoded(content)[-1], blocked_event(Rejection(body="Not on this gateway.")))
        self.assertNotIn(b"launch", content)
        self.assertNotIn(b"response.completed", content)
        yield self.assert_metered()


class StreamingDisabledTests(ResponseGuardCase):
    ai = {"promptGuard": {"response": REGEX_GUARDS}}

    @inlineCallbacks
    def test_streams_pass_untouched_and_json_is_still_guarded(self) -> Any:
        response, content = yield self.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []})
        self.assertEqual([contents([e]) for e in decoded(content)], ["My card is 4111 1111 ", "1111 1111, bye", ""])
        response, content = yield self.post("/v1/chat/completions", {"model": "m", "messages": []})
        self.assertEqual(json.loads(content)["choices"][0]["message"]["content"], MASKED)
        self.assertEqual(self.response_checks(), {"mask": 1.0, "allow": 2.0})  # the stream was not guarded

    def test_the_gateway_warns_at_start(self) -> None:
        config = parse_config(config_text(9, self.ai), ENV)
        self.assertTrue(unguarded_streams(config.binds[0].listeners[0].routes[0].policies))
        events: list[dict[str, Any]] = []
        self.patch(Gateway, "log", Logger(observer=events.append))
        Gateway(config)
        [line] = [formatEvent(event) for event in events if "promptGuard.response" in formatEvent(event)]
        self.assertIn("streamed (SSE) answers are not guarded unless promptGuard.streaming is Enabled", line)
        enabled = parse_config(config_text(9, {"promptGuard": {"streaming": "Enabled", "response": REGEX_GUARDS}}), ENV)
        self.assertFalse(unguarded_streams(enabled.binds[0].listeners[0].routes[0].policies))


class NoResponseGuardTests(ResponseGuardCase):
    ai = {"promptGuard": {"streaming": "Enabled", "request": [{"regex": {"rules": [{"builtin": "email"}]}}]}}

    @inlineCallbacks
    def test_answers_pass_byte_for_byte(self) -> Any:
        # Through the gateway, then from the fake itself numbered alike: the same bytes.
        for path, body in (
            ("/v1/chat/completions", {"model": "gpt-4", "messages": []}),
            ("/v1/chat/completions", {"model": "gpt-4", "stream": True, "stream_options": {"include_usage": True}, "messages": []}),
            ("/v1/responses", {"model": "gpt-4", "stream": True, "input": "hi"}),
        ):
            self.fake.response_numbers = itertools.count(1)
            response, through_gateway = yield self.post(path, body)
            self.fake.response_numbers = itertools.count(1)
            direct = yield treq.post(f"http://127.0.0.1:{self.upstream_port}{path}", json=body, persistent=False)
            direct = yield direct.content()
            self.assertEqual(through_gateway, direct, path)
            self.assertIn(b"4111 1111 ", through_gateway)
        self.assertEqual(self.response_checks(), {})


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebJSONAnswerTests = on_twisted_web(JSONAnswerTests)
TwistedWebStreamTests = on_twisted_web(StreamTests)
