"""
Guards that call out: agentgateway's guardrail webhook and OpenAI's
moderation endpoint. The decisions as tables (what is sent, what an
answer means, which headers go); the calls against real loopback servers
(L{FakeGuardrailWebhook}, L{FakeOpenAI}'s moderations); and a real
gateway waiting for them before anything goes upstream.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import treq
import yaml
from openai import OpenAI, PermissionDeniedError
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived

from agw import Gateway
from agw.config import Builtin, ConfigError, FailureMode, Guard, HeaderMatch, Moderation, RegexGuard, RegexRule, Rejection, Scope, Webhook, parse_config
from agw.decisions import BadAnswer, Slot, Verdict, forwarded_headers, moderation_verdict, webhook_payload, webhook_verdict
from agw.http import GuardCallFailed, GuardCalls, check_guards, check_response_texts
from agw.metering import AccessLog
from agw.routing import TrustRootError
from agw.serve._options import check_files
from agw.testing import FakeGuardrailWebhook, TestCA
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    free_port,
    guard_check_counts,
    listening_fake,
    LoopbackClient,
    running_gateway,
    wait_until,
)
from tests.test_guardrails import ENV, config_text


def slots(*texts: str, role: str = "user") -> list[Slot]:
    return [Slot({"content": text}, "content", Scope.MESSAGES, role) for text in texts]


def texts_of(found: list[Slot]) -> list[str]:
    return [slot.text for slot in found]


EMAILS = Guard(regex=RegexGuard(rules=(RegexRule(builtin=Builtin.EMAIL),)))


class WebhookAnswerTests(SynchronousTestCase):
    """What a webhook's answer means (agentgateway's untagged action), applied to the texts sent."""

    def test_what_is_sent(self) -> None:
        sent = [Slot({"c": "be brief"}, "c", Scope.SYSTEM_PROMPT, "system"), *slots("hi")]
        self.assertEqual(webhook_payload(sent, "request"), {"body": {"messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        ]}})
        self.assertEqual(webhook_payload(slots("Hello!"), "response"), {"body": {"choices": [
            {"message": {"role": "assistant", "content": "Hello!"}},
        ]}})

    def test_pass_mask_and_reject(self) -> None:
        for answer in ({"action": {}}, {"action": {"reason": "fine"}}, {"action": {"reason": None, "other": 1}}):
            sent = slots("a", "b")
            self.assertEqual(webhook_verdict(answer, sent, "request"), Verdict("allow"), answer)
            self.assertEqual(texts_of(sent), ["a", "b"])
        sent = slots("a", "b")
        masked = {"action": {"body": {"messages": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]}}}
        self.assertEqual(webhook_verdict(masked, sent, "request"), Verdict("mask"))
        self.assertEqual(texts_of(sent), ["A", "B"])
        sent = slots("out")
        choices = {"action": {"body": {"choices": [{"message": {"role": "assistant", "content": "OUT"}}]}, "reason": "r"}}
        self.assertEqual(webhook_verdict(choices, sent, "response"), Verdict("mask"))
        self.assertEqual(texts_of(sent), ["OUT"])
        rejected = webhook_verdict({"action": {"body": "no", "status_code": 422, "reason": "r"}}, slots("x"), "request")
        self.assertEqual(rejected, Verdict("reject", Rejection(status=422, body="no")))

    def test_answers_agw_cannot_act_on(self) -> None:
        two = {"body": {"messages": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]}}
        for answer, phase, why in [
            ([], "request", "action"),
            ({"verdict": "pass"}, "request", "action"),
            ({"action": "pass"}, "request", "action"),
            ({"action": {"reason": 5}}, "request", "reason"),
            ({"action": {"body": {"messages": [{"role": "user", "content": "A"}]}}}, "request", "give back 2"),
            ({"action": {"body": {"messages": [{"role": "user"}, {"role": "user", "content": "B"}]}}}, "request", "string content"),
            ({"action": two}, "response", "body.choices"),
            ({"action": {"body": "no"}}, "request", "status_code"),
            ({"action": {"body": "no", "status_code": 99}}, "request", "status_code"),
            ({"action": {"body": "no", "status_code": "403"}}, "request", "status_code"),
            ({"action": {"status_code": 403}}, "request", "string body"),
        ]:
            sent = slots("a", "b")
            with self.assertRaises(BadAnswer, msg=repr(answer)) as raised:
                webhook_verdict(answer, sent, phase)
            self.assertIn(why, str(raised.exception))
            self.assertEqual(texts_of(sent), ["a", "b"])  # nothing applied

    def test_forwarded_headers_only_as_matched(self) -> None:
        headers = {
            "x-tenant": "acme", "x-team": "red", "authorization": "Bearer sk-client", "cookie": "s=1",
            "content-length": "12", "api-key": "k",
        }
        matches = (
            HeaderMatch("x-tenant", exact="acme"), HeaderMatch("x-team", pattern=re.compile("blue|green")),
            HeaderMatch("content-length", pattern=re.compile(".*")), HeaderMatch("x-absent", exact="y"),
        )
        self.assertEqual(forwarded_headers(headers, matches), {"x-tenant": "acme"})
        named = (HeaderMatch("authorization", pattern=re.compile("Bearer .*")),)
        self.assertEqual(forwarded_headers(headers, named), {"authorization": "Bearer sk-client"})
        self.assertEqual(forwarded_headers(headers, ()), {})

    def test_moderation_answers(self) -> None:
        rejection = Rejection(status=400, body="flagged")
        flagged = {"results": [{"flagged": False}, {"flagged": True}]}
        self.assertEqual(moderation_verdict(flagged, rejection), Verdict("reject", rejection))
        self.assertEqual(moderation_verdict({"results": [{"flagged": False}]}, rejection), Verdict("allow"))
        for bad in ({}, {"results": "no"}, {"results": [1]}, ["results"]):
            with self.assertRaises(BadAnswer):
                moderation_verdict(bad, rejection)

    def test_regex_guards_alone_answer_at_once(self) -> None:
        sent = slots("mail a@b.io")
        checking = check_guards((EMAILS,), sent, "request", None, {})
        outcome = self.successResultOf(checking)  # fired already: callers can stay synchronous
        self.assertEqual([(c.index, c.action, c.kind) for c in outcome.checks], [(0, "mask", "regex")])
        self.assertEqual(texts_of(sent), ["mail <EMAIL_ADDRESS>"])


class BackendConfigTests(SynchronousTestCase):
    def guard(self, spec: dict[str, Any]) -> Guard:
        config = parse_config(config_text(1, {"promptGuard": {"request": [spec]}}), ENV)
        return config.binds[0].listeners[0].routes[0].policies.prompt_guard.request[0]

    def test_webhook_and_moderation_fields(self) -> None:
        guard = self.guard(webhook_guard("127.0.0.1:9", timeout="250ms", failureMode="failOpen"))
        self.assertEqual((guard.kind, guard.webhook.timeout, guard.failure_mode), ("webhook", 0.25, FailureMode.FAIL_OPEN))
        self.assertEqual(self.guard(webhook_guard("127.0.0.1:9")).failure_mode, FailureMode.FAIL_CLOSED)
        guard = self.guard({"openAIModeration": {"policies": {"backendAuth": {"key": "sk-m"}}}})
        self.assertEqual((guard.moderation.url, guard.moderation.key.value), ("https://api.openai.com/v1/moderations", "sk-m"))
        self.assertEqual(guard.failure_mode, FailureMode.FAIL_OPEN)

    def test_what_the_moderation_call_cannot_honour_is_refused(self) -> None:
        where = "promptGuard.request[0].openAIModeration.policies"
        for policies, field in [
            ({"backendTLS": {"hostname": "other.example"}}, "backendTLS.hostname"),
            ({"backendAuth": {"key": {"value": "k", "location": {"header": {"name": "x-key"}}}}}, "backendAuth.key.location"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                self.guard({"openAIModeration": {"policies": policies}})
            self.assertIn(f"{where}.{field}: supported by agentgateway but not by agw yet", str(raised.exception))

    def test_an_unreadable_trust_root_stops_the_gateway(self) -> None:
        config = parse_config(config_text(1, {"promptGuard": {"request": [
            {"openAIModeration": {"policies": {"backendTLS": {"root": "/nonexistent/ca.pem"}}}},
        ]}}), ENV)
        with self.assertRaises(ConfigError) as raised:
            check_files(config)
        self.assertIn("promptGuard.request[0].openAIModeration.policies.backendTLS.root", str(raised.exception))
        with self.assertRaises(TrustRootError):
            Gateway(config)


def webhook_guard(host: str, **webhook: Any) -> dict[str, Any]:
    return {"webhook": {"target": {"host": host}, **webhook}}


class GuardCallsTests(TestCase):
    """L{GuardCalls} and L{check_guards} against a real webhook and moderation endpoint on loopback."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.webhook = FakeGuardrailWebhook()
        listening = yield self.webhook.listen(reactor)
        self.addCleanup(listening.stopListening)
        self.host = f"127.0.0.1:{listening.getHost().port}"
        self.calls = GuardCalls(reactor)
        self.addCleanup(self.calls.close)

    def guard(self, **webhook: Any) -> Guard:
        return Guard(webhook=Webhook(host=self.host, **webhook))

    @inlineCallbacks
    def test_response_texts_are_masked_or_rejected(self) -> Any:
        self.webhook.masks = {r"\d{4}": "####"}
        masked, outcome = yield check_response_texts((self.guard(),), ["PIN 1234", "none"], self.calls, {})
        self.assertEqual(masked, ["PIN ####", "none"])
        self.assertEqual([(c.index, c.action, c.kind) for c in outcome.checks], [(0, "mask", "webhook")])
        [call] = self.webhook.calls
        self.assertEqual(call.path, "/response")
        self.assertEqual(call.json, {"body": {"choices": [
            {"message": {"role": "assistant", "content": "PIN 1234"}}, {"message": {"role": "assistant", "content": "none"}},
        ]}})
        self.webhook.reject_words = {"secret"}
        masked, outcome = yield check_response_texts((EMAILS, self.guard()), ["a@b.io: the secret"], self.calls, {})
        self.assertEqual(outcome.rejection, Rejection(status=403, body="rejected: secret"))
        self.assertEqual([c.action for c in outcome.checks], ["mask", "reject"])
        self.assertEqual(self.webhook.calls[-1].texts, ["<EMAIL_ADDRESS>: the secret"])  # the regex guard ran first

    @inlineCallbacks
    def test_an_answer_too_large_is_a_failure(self) -> Any:
        self.webhook.masks = {"x": "y" * 4096}
        small = GuardCalls(reactor, max_answer=1024)
        self.addCleanup(small.close)
        with self.assertRaises(GuardCallFailed) as raised:
            yield small.webhook(Webhook(host=self.host), slots("x"), "request", {})
        self.assertIn("larger than 1024 bytes", str(raised.exception))
        outcome = yield check_guards((self.guard(failure_mode=FailureMode.FAIL_OPEN),), slots("x"), "request", small, {})
        self.assertEqual([(c.action, outcome.rejection) for c in outcome.checks], [("failOpen", None)])

    @inlineCallbacks
    def test_each_failure_follows_the_failure_mode(self) -> Any:
        reasons = {"error": "answered 500", "garbage": "not JSON", "wrong_count": "give back 2", "hang": "no answer within 0.05s"}
        for misbehaviour, reason in reasons.items():
            self.webhook.misbehaviour = misbehaviour
            self.webhook.masks = {"a": "b"}
            timeout = 0.05 if misbehaviour == "hang" else 10.0  # the others fail on their answer, not on time
            failure = yield self.assertFailure(
                self.calls.webhook(Webhook(host=self.host, timeout=timeout), slots("a", "c"), "request", {}), GuardCallFailed, BadAnswer,
            )
            self.assertIn(reason, str(failure))
            closed, opened = self.guard(timeout=timeout), self.guard(timeout=timeout, failure_mode=FailureMode.FAIL_OPEN)
            sent = slots("a", "c")
            outcome = yield check_guards((opened, closed, EMAILS), sent, "request", self.calls, {})
            self.assertEqual([c.action for c in outcome.checks], ["failOpen", "reject"], misbehaviour)
            self.assertTrue(outcome.unavailable)
            self.assertEqual(outcome.rejection.status, 503)
            self.assertEqual(texts_of(sent), ["a", "c"])
        yield wait_until(lambda: self.webhook.abandoned == 3)  # the hung calls were given up, not left open

    @inlineCallbacks
    def test_an_unreachable_backend_fails(self) -> Any:
        guard = Guard(webhook=Webhook(host=f"127.0.0.1:{free_port()}"))
        outcome = yield check_guards((guard,), slots("x"), "request", self.calls, {})
        self.assertEqual((outcome.unavailable, [c.action for c in outcome.checks]), (True, ["reject"]))
        moderation = Guard(moderation=Moderation(url=f"http://127.0.0.1:{free_port()}/v1/moderations"))
        outcome = yield check_guards((moderation,), slots("x"), "request", self.calls, {})
        self.assertEqual((outcome.unavailable, [c.action for c in outcome.checks]), (False, ["failOpen"]))

    @inlineCallbacks
    def test_cancelling_abandons_the_call(self) -> Any:
        self.webhook.misbehaviour = "hang"
        checking = check_guards((self.guard(),), slots("x"), "request", self.calls, {})
        yield wait_until(lambda: len(self.webhook.calls) == 1)
        checking.cancel()
        self.failureResultOf(checking, CancelledError)
        yield wait_until(lambda: self.webhook.abandoned == 1)


class GatewayBackendCase(LoopbackClient, TestCase):
    """A gateway whose route's request guards are set by each test, in front of the fake and a fake webhook."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, self.upstream_port = yield listening_fake(self)
        self.webhook = FakeGuardrailWebhook()
        listening = yield self.webhook.listen(reactor)
        self.addCleanup(listening.stopListening)
        self.host = f"127.0.0.1:{listening.getHost().port}"
        self.moderations = f"http://127.0.0.1:{self.upstream_port}/v1/moderations"
        self.log = io.StringIO()

    @inlineCallbacks
    def start(self, guards: list[dict[str, Any]], response: list[dict[str, Any]] | None = None) -> Any:
        text = config_text(self.upstream_port, {"promptGuard": {"request": guards, "response": response or []}})
        self.gateway, _, self.port = yield running_gateway(self, text, ENV, access_log=AccessLog(self.log))

    @inlineCallbacks
    def chat(self, content: str, **headers: str) -> Any:
        body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]}
        response = yield treq.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", json=body, headers=headers, persistent=False,
        )
        content_bytes = yield response.content()
        return response, content_bytes

    def upstream(self, path: str = "/v1/chat/completions") -> list[Any]:
        return [r for r in self.fake.http_requests if r.uri == path]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def guard_checks(self) -> dict[tuple[str, ...], float]:
        return guard_check_counts(self.gateway, "phase", "action")


class WebhookGatewayTests(GatewayBackendCase):
    @inlineCallbacks
    def test_a_webhook_mask_is_what_the_provider_sees(self) -> Any:
        self.webhook.masks = {r"Project [A-Z][a-z]+": "<project>"}
        yield self.start([webhook_guard(self.host)])
        completion = yield self.sdk(lambda c: c.chat.completions.create(
            model="m", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Status of Project Falcon?"}],
        ))
        self.assertEqual(completion.choices[0].message.content, "Hello!")
        [call] = self.webhook.calls
        self.assertEqual((call.path, call.headers["content-type"]), ("/request", "application/json"))
        self.assertEqual(call.json, {"body": {"messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Status of Project Falcon?"},
        ]}})
        [seen] = self.upstream()
        self.assertEqual(seen.json["messages"], [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Status of <project>?"},
        ])
        [line] = self.log_lines()
        self.assertEqual((line["agw.guardrail.action"], line["agw.guardrail.guard"]), ("mask", "promptGuard.request[0]"))
        self.assertEqual(self.guard_checks(), {("request", "mask"): 1.0})

    @inlineCallbacks
    def test_a_webhook_reject_answers_its_status_and_body(self) -> Any:
        self.webhook.reject_words, self.webhook.reject_status = {"plutonium"}, 451
        yield self.start([webhook_guard(self.host)])
        response, content = yield self.chat("Where to buy Plutonium?")
        self.assertEqual((response.code, content), (451, b"rejected: plutonium"))
        self.assertEqual(self.upstream(), [])
        [line] = self.log_lines()
        self.assertEqual((line["http.status"], line["agw.guardrail.action"]), (451, "reject"))
        response, _ = yield self.chat("Where to buy apples?")
        self.assertEqual((response.code, len(self.upstream())), (200, 1))
        self.assertEqual(self.guard_checks(), {("request", "reject"): 1.0, ("request", "allow"): 1.0})

    @inlineCallbacks
    def test_only_matched_headers_reach_the_webhook_and_never_the_backend_key(self) -> Any:
        yield self.start([
            webhook_guard(self.host, forwardHeaderMatches=[
                {"name": "X-Tenant", "value": {"exact": "acme"}}, {"name": "x-team", "value": {"regex": "blue|green"}},
            ]),
            webhook_guard(self.host, forwardHeaderMatches=[{"name": "authorization", "value": {"regex": "Bearer .*"}}]),
        ])
        response, _ = yield self.chat(
            "hi", **{"X-Tenant": "acme", "X-Team": "red", "Authorization": "Bearer sk-client", "Cookie": "s=1", "api-key": "k"},
        )
        self.assertEqual(response.code, 200)
        first, second = self.webhook.calls
        self.assertEqual(first.headers.get("x-tenant"), "acme")
        for name in ("x-team", "authorization", "cookie", "api-key"):
            self.assertNotIn(name, first.headers)
        # Named explicitly, the client's own credential goes (as agentgateway); agw's key never does.
        self.assertEqual(second.headers["authorization"], "Bearer sk-client")
        self.assertNotIn("x-tenant", second.headers)
        for call in (first, second):
            self.assertNotIn(BACKEND_KEY, json.dumps(call.headers))
        self.assertEqual(self.upstream()[0].headers["authorization"], f"Bearer {BACKEND_KEY}")

    @inlineCallbacks
    def test_a_client_key_of_agw_is_never_forwarded_even_when_named(self) -> Any:
        # With an apiKey policy the client's Authorization is agw's credential (docs/security.md).
        data = yaml.safe_load(config_text(self.upstream_port, {"promptGuard": {"request": [webhook_guard(self.host, forwardHeaderMatches=[
            {"name": "authorization", "value": {"regex": ".*"}}, {"name": "x-tenant", "value": {"regex": ".*"}},
        ])]}}))
        data["binds"][0]["listeners"][0]["routes"][0]["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": CLIENT_KEY}]}
        self.gateway, _, self.port = yield running_gateway(self, yaml.safe_dump(data), ENV, access_log=AccessLog(self.log))
        response, _ = yield self.chat("hi", Authorization=f"Bearer {CLIENT_KEY}", **{"X-Tenant": "acme"})
        self.assertEqual(response.code, 200)
        [call] = self.webhook.calls
        self.assertEqual(call.headers.get("x-tenant"), "acme")
        self.assertNotIn("authorization", call.headers)
        self.assertNotIn(CLIENT_KEY, json.dumps(call.headers))

    @inlineCallbacks
    def test_a_webhook_that_hangs_fails_closed_with_503(self) -> Any:
        self.webhook.misbehaviour = "hang"
        yield self.start([webhook_guard(self.host, timeout="100ms")])
        response, content = yield self.chat("hello")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(content)["error"]["code"], "guardrail_unavailable")
        self.assertEqual(self.upstream(), [])
        yield wait_until(lambda: self.webhook.abandoned == 1)
        self.assertEqual(self.guard_checks(), {("request", "reject"): 1.0})

    @inlineCallbacks
    def test_a_webhook_that_hangs_fails_open_when_told(self) -> Any:
        self.webhook.misbehaviour = "hang"
        yield self.start([webhook_guard(self.host, timeout="100ms", failureMode="failOpen"), {"regex": {"rules": [{"builtin": "email"}]}}])
        response, _ = yield self.chat("write to jo@example.com")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.upstream()[0].json["messages"][1]["content"], "write to <EMAIL_ADDRESS>")  # later guards still ran
        self.assertEqual(self.guard_checks(), {("request", "failOpen"): 1.0, ("request", "mask"): 1.0})
        [line] = self.log_lines()
        self.assertEqual((line["agw.guardrail.action"], line["agw.guardrail.guard"]), ("mask", "promptGuard.request[1]"))

    @inlineCallbacks
    def test_a_regex_mask_runs_before_the_webhook(self) -> Any:
        self.webhook.masks = {"Falcon": "<bird>"}
        yield self.start([{"regex": {"rules": [{"builtin": "email"}]}}, webhook_guard(self.host)])
        response, _ = yield self.chat("Falcon, mail jo@example.com")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.webhook.calls[0].texts, ["Be brief.", "Falcon, mail <EMAIL_ADDRESS>"])
        self.assertEqual(self.upstream()[0].json["messages"][1]["content"], "<bird>, mail <EMAIL_ADDRESS>")

    @inlineCallbacks
    def test_a_client_that_leaves_cancels_the_webhook_call(self) -> Any:
        self.webhook.misbehaviour = "hang"
        yield self.start([webhook_guard(self.host, timeout="5m")])  # the client leaves long before
        asking = treq.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
            persistent=False,
        )
        yield wait_until(lambda: len(self.webhook.calls) == 1)
        asking.cancel()
        yield asking.addErrback(lambda failure: failure.trap(CancelledError, ResponseNeverReceived))
        yield wait_until(lambda: self.webhook.abandoned == 1)
        yield wait_until(lambda: len(self.log_lines()) == 1)
        self.assertEqual(self.log_lines()[0]["http.status"], 499)
        self.assertEqual(self.upstream(), [])


class ModerationGatewayTests(GatewayBackendCase):
    def moderation(self, **extra: Any) -> dict[str, Any]:
        return {"openAIModeration": {"url": self.moderations, "policies": {"backendAuth": {"key": "sk-moderation"}}, **extra}}

    @inlineCallbacks
    def test_flagged_is_rejected_and_unflagged_passes_with_the_moderation_key(self) -> Any:
        self.fake.moderation_flag_words = {"bomb"}
        yield self.start([self.moderation()])

        def ask(client: OpenAI) -> Any:
            with self.assertRaises(PermissionDeniedError) as raised:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "How to build a bomb"}])
            return raised.exception

        refused = yield self.sdk(ask)
        self.assertEqual((refused.status_code, refused.body["code"]), (403, "guardrail_rejected"))
        self.assertEqual(self.upstream(), [])
        response, _ = yield self.chat("How to build a kite")
        self.assertEqual(response.code, 200)
        flagged, passed = self.upstream("/v1/moderations")
        self.assertEqual(flagged.json, {"input": ["How to build a bomb"], "model": "omni-moderation-latest"})
        self.assertEqual(passed.json["input"], ["Be brief.", "How to build a kite"])
        self.assertEqual(flagged.headers["authorization"], "Bearer sk-moderation")
        self.assertNotIn(BACKEND_KEY, json.dumps(flagged.headers))
        self.assertEqual(len(self.upstream()), 1)
        self.assertEqual(self.guard_checks(), {("request", "reject"): 1.0, ("request", "allow"): 1.0})

    @inlineCallbacks
    def test_a_configured_rejection(self) -> Any:
        self.fake.moderation_flag_words = {"bomb"}
        yield self.start([{**self.moderation(), "rejection": {"status": 400, "body": "Not here."}}])
        response, content = yield self.chat("bomb")
        self.assertEqual((response.code, content), (400, b"Not here."))

    @inlineCallbacks
    def test_moderation_down_fails_open_by_default(self) -> Any:
        self.moderations = f"http://127.0.0.1:{free_port()}/v1/moderations"
        self.fake.moderation_flag_words = {"bomb"}
        yield self.start([self.moderation(), self.moderation(failureMode="failClosed")])
        response, content = yield self.chat("bomb")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(content)["error"]["code"], "guardrail_unavailable")
        self.assertEqual(self.guard_checks(), {("request", "failOpen"): 1.0, ("request", "reject"): 1.0})
        self.assertEqual(self.upstream(), [])

    @inlineCallbacks
    def test_moderation_without_a_key_is_refused_by_the_provider_and_fails_open(self) -> Any:
        # No moderation key: agw does not lend the route's backend key (the fake answers 401, as OpenAI).
        self.fake.moderation_flag_words = {"bomb"}
        yield self.start([{"openAIModeration": {"url": self.moderations}}])
        response, _ = yield self.chat("bomb")
        self.assertEqual(response.code, 200)
        [call] = self.upstream("/v1/moderations")
        self.assertNotIn("authorization", call.headers)
        self.assertEqual(self.guard_checks(), {("request", "failOpen"): 1.0})


class ModerationTLSTests(TestCase):
    """A moderation URL over HTTPS is verified against the guard's backendTLS root."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA.make()
        self.moderator, port = yield listening_fake(self, tls=self.ca.server_options())
        self.moderator.moderation_flag_words = {"bomb"}
        self.url = f"https://127.0.0.1:{port}/v1/moderations"
        self.fake, self.upstream_port = yield listening_fake(self)

    def root(self, ca: TestCA) -> str:
        path = self.mktemp() + ".pem"
        with open(path, "wb") as f:
            f.write(ca.ca_pem)
        return path

    @inlineCallbacks
    def ask(self, ca: TestCA) -> Any:
        guard = {"openAIModeration": {"url": self.url, "policies": {"backendAuth": {"key": "sk-m"}, "backendTLS": {"root": self.root(ca)}}}}
        gateway, _, port = yield running_gateway(self, config_text(self.upstream_port, {"promptGuard": {"request": [guard]}}), ENV)
        response = yield treq.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": [{"role": "user", "content": "a bomb"}]}, persistent=False,
        )
        yield response.content()
        return response.code

    @inlineCallbacks
    def test_verified_against_the_root(self) -> Any:
        status = yield self.ask(self.ca)
        self.assertEqual(status, 403)
        self.assertEqual(len(self.moderator.http_requests), 1)

    @inlineCallbacks
    def test_another_root_is_not_trusted(self) -> Any:
        status = yield self.ask(TestCA.make())
        self.assertEqual(status, 200)  # failOpen: the moderation call never got through TLS
        self.assertEqual(self.moderator.http_requests, [])


class WebhookAnswerGatewayTests(GatewayBackendCase):
    """A webhook in promptGuard.response reads whole (JSON) answers: POST /response, mask or reject, metered either way."""

    @inlineCallbacks
    def test_a_webhook_masks_the_answer(self) -> Any:
        self.fake.reply_deltas = ("Your code is ", "ALPHA-7")
        self.webhook.masks = {r"ALPHA-\d": "<code>"}
        yield self.start([], [{"regex": {"rules": [{"pattern": "Your"}]}}, webhook_guard(self.host)])
        completion = yield self.sdk(lambda c: c.chat.completions.create(model="m", messages=[{"role": "user", "content": "code?"}]))
        self.assertEqual(completion.choices[0].message.content, "<masked> code is <code>")
        [call] = self.webhook.calls
        # In order: the regex guard ran first, and the webhook saw what it left.
        self.assertEqual(call.json, {"body": {"choices": [{"message": {"role": "assistant", "content": "<masked> code is ALPHA-7"}}]}})
        self.assertEqual(call.path, "/response")
        self.assertEqual(self.guard_checks(), {("response", "mask"): 2.0})

    @inlineCallbacks
    def test_a_webhook_rejects_the_answer_and_it_is_still_metered(self) -> Any:
        self.fake.reply_deltas = ("The launch codes are 0000",)
        self.webhook.reject_words, self.webhook.reject_status = {"launch"}, 451
        yield self.start([], [webhook_guard(self.host)])
        response, content = yield self.chat("codes?")
        self.assertEqual((response.code, content), (451, b"rejected: launch"))
        [line] = self.log_lines()
        billed = self.fake.ledger[-1]
        self.assertEqual(line["gen_ai.usage.output_tokens"], billed.usage["output_tokens"])

    @inlineCallbacks
    def test_a_webhook_down_fails_closed_with_503(self) -> Any:
        self.webhook.misbehaviour = "error"
        yield self.start([], [webhook_guard(self.host)])
        response, content = yield self.chat("hi")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(content)["error"]["code"], "guardrail_unavailable")
