"""
policies.ai.prompts and promptGuard (regex request guards): the built-in
recognizers and the guard runner on their own, the config's refusals, and
a real gateway masking, rejecting and enriching what reaches the fake
provider.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import yaml
from openai import OpenAI, PermissionDeniedError
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw import Gateway
from agw.config import Builtin, ConfigError, Guard, GuardAction, Policies, RegexGuard, RegexRule, RouteType, Scope, parse_config
from agw.decisions import RECOGNIZERS, TextStream, add_prompts, apply_fields, guard_request, luhn_valid, resolve_alias, unguarded_types
from agw.metering import AccessLog
from tests.support import (
    BACKEND_KEY,
    guard_check_counts,
    listening_fake,
    LoopbackClient,
    registry_samples,
    running_gateway,
    seed_config_text,
)

ENV = {"OPENAI_API_KEY": BACKEND_KEY}


def config_text(upstream_port: int, ai: dict[str, Any]) -> str:
    """One route to the fake with completions and responses, and C{ai} merged into its policies.ai."""
    return yaml.safe_dump({
        "config": {"statsAddr": "127.0.0.1:0", "readinessAddr": "127.0.0.1:0", "adminAddr": "127.0.0.1:0"},
        "binds": [{"port": 0, "listeners": [{"routes": [{
            "backends": [{"ai": {"name": "openai", "provider": {"openAI": {"model": "gpt-4"}}, "hostOverride": f"127.0.0.1:{upstream_port}"}}],
            "policies": {
                "ai": {"routes": {
                    "/v1/chat/completions": "completions", "/v1/responses": "responses", "/v1/embeddings": "embeddings", "*": "passthrough",
                }, **ai},
                "backendAuth": {"key": "$OPENAI_API_KEY"},
            },
        }]}]}],
    })


def mask(builtin: Builtin, text: str) -> str:
    return RECOGNIZERS[builtin].mask(text)[0]


class RecognizerTests(SynchronousTestCase):
    def test_luhn(self) -> None:
        self.assertTrue(luhn_valid("4111111111111111"))
        self.assertTrue(luhn_valid("79927398713"))
        self.assertFalse(luhn_valid("4111111111111112"))
        self.assertFalse(luhn_valid("79927398710"))

    def test_credit_card_needs_the_luhn_digit(self) -> None:
        self.assertEqual(mask(Builtin.CREDIT_CARD, "pay 4111 1111 1111 1111 now"), "pay <CREDIT_CARD> now")
        self.assertEqual(mask(Builtin.CREDIT_CARD, "pay 5500-0000-0000-0004."), "pay <CREDIT_CARD>.")
        self.assertEqual(mask(Builtin.CREDIT_CARD, "amex 378282246310005"), "amex <CREDIT_CARD>")
        # The same shapes with a wrong last digit, and an order number: left alone.
        self.assertEqual(mask(Builtin.CREDIT_CARD, "pay 4111 1111 1111 1112 now"), "pay 4111 1111 1111 1112 now")
        self.assertEqual(mask(Builtin.CREDIT_CARD, "order 1234567890123"), "order 1234567890123")
        self.assertEqual(mask(Builtin.CREDIT_CARD, "12 digits 411111111111"), "12 digits 411111111111")

    def test_ssn(self) -> None:
        self.assertEqual(mask(Builtin.SSN, "SSN 123-45-6789."), "SSN <SSN>.")
        for never_issued in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-6789", "123-45-0000"):
            self.assertEqual(mask(Builtin.SSN, never_issued), never_issued)
        self.assertEqual(mask(Builtin.SSN, "123456789 and 1123-45-6789"), "123456789 and 1123-45-6789")

    def test_email(self) -> None:
        self.assertEqual(mask(Builtin.EMAIL, "write to jane.doe+x@mail.example.co.uk."), "write to <EMAIL_ADDRESS>.")
        self.assertEqual(mask(Builtin.EMAIL, "not one: jane@localhost or @handle"), "not one: jane@localhost or @handle")

    def test_phone_number(self) -> None:
        self.assertEqual(
            mask(Builtin.PHONE_NUMBER, "call (555) 123-4567, 555.123.4567 or +1 555-123-4567"),
            "call <PHONE_NUMBER>, <PHONE_NUMBER> or <PHONE_NUMBER>",
        )
        self.assertEqual(mask(Builtin.PHONE_NUMBER, "intl +442071838750"), "intl <PHONE_NUMBER>")
        self.assertEqual(mask(Builtin.PHONE_NUMBER, "id 5551234567, v1.555.1234"), "id 5551234567, v1.555.1234")

    def test_built_ins_scan_long_hostile_text_in_linear_time(self) -> None:
        # Each would take minutes if a pattern rescanned a run from every position in it (200 KB).
        import time

        for text in ("a" * 200_000, "a." * 100_000 + "@", "a@" + "b." * 100_000, "1" * 200_000, "1-" * 100_000, "1 " * 100_000):
            for builtin, recognizer in RECOGNIZERS.items():
                started = time.perf_counter()
                recognizer.mask(text)
                self.assertLess(time.perf_counter() - started, 2.0, (builtin, text[:8]))

    def test_agws_own_builtins(self) -> None:
        self.assertEqual(mask(Builtin.IPV4, "from 10.0.0.1 and 192.168.1.255."), "from <IP_ADDRESS> and <IP_ADDRESS>.")
        for not_one in ("version 1.2.3.4.5", "256.1.1.1", "1.2.3"):
            self.assertEqual(mask(Builtin.IPV4, not_one), not_one)
        self.assertEqual(mask(Builtin.AWS_ACCESS_KEY, "key AKIAIOSFODNN7EXAMPLE."), "key <AWS_ACCESS_KEY>.")
        self.assertEqual(mask(Builtin.AWS_ACCESS_KEY, "AKIAIOSFODNN7EXAMPLEX"), "AKIAIOSFODNN7EXAMPLEX")  # one too long
        token = "ghp_" + "a1B2" * 9
        self.assertEqual(mask(Builtin.GITHUB_TOKEN, f"token {token} here"), "token <GITHUB_TOKEN> here")
        self.assertEqual(mask(Builtin.GITHUB_TOKEN, "ghp_short"), "ghp_short")
        self.assertEqual(mask(Builtin.API_KEY, "use sk-proj-" + "x" * 40 + " now"), "use <API_KEY> now")
        self.assertEqual(mask(Builtin.API_KEY, "a sk-abc or task-" + "x" * 30), "a sk-abc or task-" + "x" * 30)

    def test_canadian_sin(self) -> None:
        self.assertEqual(mask(Builtin.CA_SIN, "SIN 130 692 544"), "SIN <CA_SIN>")
        self.assertEqual(mask(Builtin.CA_SIN, "SIN 130-692-545 or 130 692-544"), "SIN 130-692-545 or 130 692-544")


class GuardRunnerTests(SynchronousTestCase):
    emails = Guard(regex=RegexGuard(rules=(RegexRule(builtin=Builtin.EMAIL),)))
    forbidden = Guard(regex=RegexGuard(rules=(RegexRule(pattern=__import__("re").compile(r"(?i)\bplutonium\b")),), action=GuardAction.REJECT))

    def test_completions_strings_and_text_parts_are_masked(self) -> None:
        body = {"messages": [
            {"role": "system", "content": "admin is root@example.com"},
            {"role": "user", "content": [{"type": "text", "text": "mail me: a@b.io"}, {"type": "image_url", "image_url": {"url": "x@y.zz"}}]},
        ]}
        outcome = guard_request(body, RouteType.COMPLETIONS, (self.emails,))
        self.assertEqual(body["messages"][0]["content"], "admin is <EMAIL_ADDRESS>")
        self.assertEqual(body["messages"][1]["content"][0]["text"], "mail me: <EMAIL_ADDRESS>")
        self.assertEqual(body["messages"][1]["content"][1]["image_url"]["url"], "x@y.zz")  # not text
        self.assertEqual([(c.index, c.action) for c in outcome.checks], [(0, "mask")])
        self.assertIsNone(outcome.rejection)

    def test_responses_input_and_instructions(self) -> None:
        body = {"instructions": "cc ops@example.com", "input": [
            {"role": "user", "content": "hi from me@example.org"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and you@example.net"}]},
        ]}
        guard_request(body, RouteType.RESPONSES, (self.emails,))
        self.assertEqual(body["instructions"], "cc <EMAIL_ADDRESS>")
        self.assertEqual(body["input"][0]["content"], "hi from <EMAIL_ADDRESS>")
        self.assertEqual(body["input"][1]["content"][0]["text"], "and <EMAIL_ADDRESS>")
        plain = {"input": "to x@example.com"}
        guard_request(plain, RouteType.RESPONSES, (self.emails,))
        self.assertEqual(plain["input"], "to <EMAIL_ADDRESS>")

    def test_a_rejecting_guard_stops_the_rest(self) -> None:
        body = {"messages": [{"role": "user", "content": "Plutonium for a@b.io"}]}
        outcome = guard_request(body, RouteType.COMPLETIONS, (self.forbidden, self.emails))
        self.assertEqual([(c.index, c.action) for c in outcome.checks], [(0, "reject")])
        self.assertEqual(outcome.rejection, self.forbidden.rejection)
        clean = {"messages": [{"role": "user", "content": "uranium"}]}
        outcome = guard_request(clean, RouteType.COMPLETIONS, (self.forbidden, self.emails))
        self.assertEqual([(c.index, c.action) for c in outcome.checks], [(0, "allow"), (1, "allow")])
        self.assertEqual(clean, {"messages": [{"role": "user", "content": "uranium"}]})

    def test_rules_apply_in_order_on_what_the_last_left(self) -> None:
        import re

        guard = Guard(regex=RegexGuard(rules=(RegexRule(builtin=Builtin.EMAIL), RegexRule(pattern=re.compile("EMAIL")))))
        body = {"messages": [{"role": "user", "content": "x@example.com"}]}
        guard_request(body, RouteType.COMPLETIONS, (guard,))
        self.assertEqual(body["messages"][0]["content"], "<<masked>_ADDRESS>")

    def test_prompts_around_messages_and_input(self) -> None:
        prompts = parse_config(config_text(1, {"prompts": {
            "prepend": [{"role": "system", "content": "Be brief."}], "append": [{"role": "user", "content": "In French."}],
        }}), ENV).binds[0].listeners[0].routes[0].policies.prompts
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        self.assertTrue(add_prompts(chat, RouteType.COMPLETIONS, prompts))
        self.assertEqual(chat["messages"], [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "user", "content": "In French."},
        ])
        response = {"input": "hi"}
        self.assertTrue(add_prompts(response, RouteType.RESPONSES, prompts))
        self.assertEqual(response["input"], [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "user", "content": "In French."},
        ])
        odd = {"messages": "hi"}
        self.assertFalse(add_prompts(odd, RouteType.COMPLETIONS, prompts))
        self.assertEqual(odd, {"messages": "hi"})


class TextStreamTests(SynchronousTestCase):
    """The window over a stream's deltas: only what may be the start of a match waits."""

    guards = (Guard(regex=RegexGuard(rules=(RegexRule(builtin=Builtin.CREDIT_CARD), RegexRule(builtin=Builtin.EMAIL)))),)

    def test_only_text_that_may_start_a_match_is_held(self) -> None:
        stream = TextStream(self.guards, 64)
        released = [stream.feed(delta) for delta in ("Hello there, ", "your card 4111 11", "11 1111 1111 is", " saved; mail jo@exa", "mple.com now")]
        self.assertEqual(released, ["Hello there, ", "your card ", "<CREDIT_CARD> ", "is saved; mail ", "<EMAIL_ADDRESS> "])
        self.assertEqual(stream.finish(), "now")
        self.assertEqual(stream.actions, {0: "mask"})

    def test_a_custom_pattern_the_regex_module_cannot_read_holds_hold_chars(self) -> None:
        rule = RegexRule(pattern=re.compile("secret"), partial=None)
        stream = TextStream((Guard(regex=RegexGuard(rules=(rule,))),), 4)
        self.assertEqual(stream.feed("a b c d e f"), "a b c d")  # all but the newest 4 characters
        self.assertEqual(stream.feed(" top secr"), " e f top ")
        self.assertEqual(stream.feed("et"), "")  # a whole match that may still grow waits
        self.assertEqual(stream.finish(), "<masked>")


class BodyFieldTests(SynchronousTestCase):
    def policies(self, ai: dict[str, Any]) -> Any:
        return parse_config(config_text(1, ai), ENV).binds[0].listeners[0].routes[0].policies

    def test_aliases_exact_first_then_the_longest_pattern(self) -> None:
        aliases = (("claude-*", "b"), ("claude-haiku-*", "c"), ("claude-haiku-3", "a"), ("*-mini", "d"))
        self.assertEqual(resolve_alias("claude-haiku-3", aliases), "a")
        self.assertEqual(resolve_alias("claude-haiku-4", aliases), "c")
        self.assertEqual(resolve_alias("claude-opus", aliases), "b")
        self.assertEqual(resolve_alias("gpt-4o-mini", aliases), "d")
        self.assertIsNone(resolve_alias("gpt-4o", aliases))
        self.assertIsNone(resolve_alias("claudeXyx", (("claude.*x", "e"),)))  # '.' is literal
        self.assertEqual(resolve_alias("claude.yx", (("claude.*x", "e"),)), "e")

    def test_overrides_always_defaults_when_absent(self) -> None:
        policies = self.policies({
            "defaults": {"temperature": 0.2, "metadata": {"team": "a"}, "user": "someone"},
            "overrides": {"max_tokens": 256, "user": "gateway"},
            "modelAliases": {"fast": "gpt-4o-mini"},
        })
        body = {"model": "fast", "temperature": 1, "max_tokens": 9000}
        self.assertTrue(apply_fields(body, policies))
        self.assertEqual(body, {"model": "gpt-4o-mini", "temperature": 1, "max_tokens": 256, "user": "gateway", "metadata": {"team": "a"}})
        body["metadata"]["team"] = "changed"  # a request's copy, never the config's
        again: dict[str, Any] = {"model": "slow"}
        apply_fields(again, policies)
        self.assertEqual(again["metadata"], {"team": "a"})
        self.assertEqual(again["model"], "slow")
        self.assertFalse(apply_fields({"model": "x"}, self.policies({})))


class GuardConfigTests(SynchronousTestCase):
    def refusal(self, ai: dict[str, Any]) -> str:
        with self.assertRaises(ConfigError) as raised:
            parse_config(config_text(1, ai), ENV)
        return str(raised.exception)

    def test_other_guard_kinds_are_not_supported_yet(self) -> None:
        for phase in ("request", "response"):
            where = f"binds[0].listeners[0].routes[0].policies.ai.promptGuard.{phase}[0]"
            for kind in ("bedrockGuardrails", "googleModelArmor", "azureContentSafety"):
                message = self.refusal({"promptGuard": {phase: [{kind: {}}]}})
                self.assertIn(f"{where}.{kind}: supported by agentgateway but not by agw yet", message)
            self.assertIn(f"{where}.magic: unknown field", self.refusal({"promptGuard": {phase: [{"magic": {}}]}}))
            self.assertIn(f"{where}: expected exactly one of regex, webhook, openAIModeration", self.refusal({"promptGuard": {phase: [{"rejection": {}}]}}))
        self.assertIn("response[0].openAIModeration: openAIModeration guards requests only", self.refusal(
            {"promptGuard": {"response": [{"openAIModeration": {}}]}}
        ))

    def test_response_guards_streaming_and_scope(self) -> None:
        regex = {"regex": {"rules": [{"builtin": "email"}]}}
        config = parse_config(config_text(1, {"promptGuard": {
            "streaming": "Enabled", "holdChars": 32, "response": [regex],
            "request": [{**regex, "scope": ["toolOutput", "messages"]}],
        }}), ENV)
        guard = config.binds[0].listeners[0].routes[0].policies.prompt_guard
        self.assertEqual((guard.streaming, guard.hold_chars, len(guard.response)), (True, 32, 1))
        self.assertEqual(guard.request[0].scope, (Scope.TOOL_OUTPUT, Scope.MESSAGES))
        self.assertEqual(guard.response[0].scope, (Scope.SYSTEM_PROMPT, Scope.MESSAGES))
        self.assertIn("promptGuard.streaming: expected Disabled or Enabled, got 'on'", self.refusal({"promptGuard": {"streaming": "on"}}))
        self.assertIn("promptGuard.holdChars: expected a number of characters", self.refusal({"promptGuard": {"holdChars": -1}}))
        self.assertIn("request[0].scope[0]: unknown scope 'everything'", self.refusal({"promptGuard": {"request": [{**regex, "scope": ["everything"]}]}}))
        self.assertIn("request[0].scope: scope must not be empty", self.refusal({"promptGuard": {"request": [{**regex, "scope": []}]}}))
        self.assertIn("response[0].scope: unknown field", self.refusal({"promptGuard": {"response": [{**regex, "scope": ["messages"]}]}}))
        self.assertIn("request[0].scope: only regex guards support a non-default scope", self.refusal(
            {"promptGuard": {"request": [{"webhook": {"target": {"host": "127.0.0.1:9"}}, "scope": ["toolInput"]}]}}
        ))

    def test_bad_rules(self) -> None:
        rules = "policies.ai.promptGuard.request[0].regex.rules"
        message = self.refusal({"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "email"}, {"pattern": "(unclosed"}]}}]}})
        self.assertIn(f"{rules}[1].pattern: not a valid regular expression", message)
        self.assertIn(f"{rules}[0].builtin: unknown builtin 'iban'", self.refusal({"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "iban"}]}}]}}))
        self.assertIn(f"{rules}[0]: expected exactly one of builtin, pattern", self.refusal(
            {"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "email", "pattern": "x"}]}}]}}
        ))
        self.assertIn(f"{rules}: at least one rule", self.refusal({"promptGuard": {"request": [{"regex": {"rules": []}}]}}))
        self.assertIn("regex.action: expected mask or reject, got 'block'", self.refusal(
            {"promptGuard": {"request": [{"regex": {"action": "block", "rules": [{"builtin": "ssn"}]}}]}}
        ))
        self.assertIn("rejection.status: expected an HTTP status", self.refusal(
            {"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "ssn"}]}, "rejection": {"status": "403"}}]}}
        ))
        self.assertIn("prompts.prepend[0].content: expected a string", self.refusal({"prompts": {"prepend": [{"role": "system"}]}}))

    def test_the_rest_of_policies_ai_is_still_refused(self) -> None:
        self.assertIn("policies.ai.promptCaching: supported by agentgateway but not by agw yet", self.refusal({"promptCaching": {}}))
        self.assertIn("policies.ai.defaults: expected a mapping of body field", self.refusal({"defaults": ["temperature"]}))
        self.assertIn("policies.ai.modelAliases.fast: expected a string", self.refusal({"modelAliases": {"fast": 4}}))

    def test_action_defaults_to_mask_and_rejection_to_403(self) -> None:
        config = parse_config(config_text(1, {"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "ssn"}]}}]}}), ENV)
        guard = config.binds[0].listeners[0].routes[0].policies.prompt_guard.request[0]
        assert guard.regex is not None
        self.assertEqual((guard.regex.action, guard.rejection.status, guard.rejection.body), (GuardAction.MASK, 403, None))


GUARDS = {
    "prompts": {"prepend": [{"role": "system", "content": "Be brief."}], "append": [{"role": "user", "content": "Reply in French."}]},
    "promptGuard": {"request": [
        {"regex": {"action": "mask", "rules": [{"builtin": "email"}, {"builtin": "ssn"}, {"builtin": "creditCard"}]}},
        {"regex": {"action": "reject", "rules": [{"pattern": "(?i)plutonium"}]}},
        {"regex": {"action": "reject", "rules": [{"pattern": "launch codes"}]},
         "rejection": {"status": 451, "body": "Not on this gateway.", "headers": {"set": {"x-guard": "codes"}}}},
    ]},
}


class GatewayCase(LoopbackClient, TestCase):
    ai: dict[str, Any] = GUARDS

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, upstream_port = yield listening_fake(self)
        self.log = io.StringIO()
        self.gateway, _, self.port = yield running_gateway(self, config_text(upstream_port, self.ai), ENV, access_log=AccessLog(self.log))

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def guard_checks(self) -> dict[tuple[str, ...], float]:
        return guard_check_counts(self.gateway, "action", "route")



class GuardGatewayTests(GatewayCase):
    @inlineCallbacks
    def test_email_and_ssn_are_masked_before_the_provider_sees_them(self) -> Any:
        completion = yield self.sdk(lambda c: c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "I am jo@example.com, SSN 123-45-6789."}],
        ))
        self.assertEqual(completion.choices[0].message.content, "Hello!")
        self.assertEqual(self.fake.http_requests[0].json["messages"], [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I am <EMAIL_ADDRESS>, SSN <SSN>."},
            {"role": "user", "content": "Reply in French."},
        ])
        self.assertEqual(self.fake.http_requests[0].json["model"], "gpt-4")
        [line] = self.log_lines()
        self.assertEqual((line["agw.guardrail.action"], line["agw.guardrail.guard"]), ("mask", "promptGuard.request[0]"))
        self.assertEqual(line["gen_ai.usage.input_tokens"], completion.usage.prompt_tokens)  # metered as ever
        self.assertEqual(self.guard_checks(), {("mask", "route0"): 1.0, ("allow", "route0"): 2.0})

    @inlineCallbacks
    def test_responses_input_is_masked_and_enriched(self) -> Any:
        response, _ = yield self.post("/v1/responses", {
            "model": "m", "instructions": "Escalate to boss@example.com", "input": "card 4111-1111-1111-1111",
        })
        self.assertEqual(response.code, 200)
        seen = self.fake.http_requests[0].json
        self.assertEqual(seen["instructions"], "Escalate to <EMAIL_ADDRESS>")
        self.assertEqual(seen["input"], [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "card <CREDIT_CARD>"},
            {"role": "user", "content": "Reply in French."},
        ])

    @inlineCallbacks
    def test_a_card_number_with_a_bad_check_digit_goes_as_it_came(self) -> Any:
        response, _ = yield self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "order 4111 1111 1111 1112"}]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fake.http_requests[0].json["messages"][1]["content"], "order 4111 1111 1111 1112")
        [line] = self.log_lines()
        self.assertNotIn("agw.guardrail.action", line)
        self.assertEqual(self.guard_checks(), {("allow", "route0"): 3.0})

    @inlineCallbacks
    def test_a_forbidden_word_is_refused_and_nothing_goes_upstream(self) -> Any:
        def ask(client: OpenAI) -> Any:
            with self.assertRaises(PermissionDeniedError) as raised:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Where to buy Plutonium?"}])
            return raised.exception

        refused = yield self.sdk(ask)
        self.assertEqual(refused.status_code, 403)
        self.assertEqual(refused.body, {
            "message": "The request was rejected due to inappropriate content", "type": "invalid_request_error",
            "code": "guardrail_rejected",
        })
        self.assertEqual(self.fake.http_requests, [])
        [line] = self.log_lines()
        self.assertEqual((line["http.status"], line["agw.guardrail.action"], line["agw.guardrail.guard"]), (403, "reject", "promptGuard.request[1]"))
        self.assertEqual(self.guard_checks(), {("allow", "route0"): 1.0, ("reject", "route0"): 1.0})

    @inlineCallbacks
    def test_a_configured_rejection(self) -> Any:
        response, content = yield self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "the launch codes, please"}]})
        self.assertEqual((response.code, content), (451, b"Not on this gateway."))
        self.assertEqual(response.headers.getRawHeaders("x-guard"), ["codes"])
        self.assertEqual(self.fake.http_requests, [])
        metric = registry_samples(self.gateway.metrics.registry)
        statuses = {dict(labels)["status"]: value for (name, labels), value in metric.items() if name == "agentgateway_requests_total"}
        self.assertEqual(statuses, {"451": 1.0})

    @inlineCallbacks
    def test_embeddings_and_passthrough_are_not_read_by_guards(self) -> Any:
        # Only completions and responses are guarded (docs/guardrails.md): a body elsewhere goes as it came.
        for path in ("/v1/embeddings", "/v1/files"):
            response, _ = yield self.post(path, {"input": "plutonium for jo@example.com"})
            self.assertEqual(response.code, 200)
        self.assertEqual([r.json["input"] for r in self.fake.http_requests], ["plutonium for jo@example.com"] * 2)
        self.assertEqual(self.guard_checks(), {})


class MaskOnlyGatewayTests(GatewayCase):
    ai = {"promptGuard": {"request": [{"regex": {"rules": [{"builtin": "phoneNumber"}, {"pattern": "[Pp]roject [A-Z][a-z]+"}]}}]}}

    @inlineCallbacks
    def test_a_masked_body_is_what_goes_upstream(self) -> Any:
        # The backend's model already: only the mask changes the body.
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Project Falcon: call (555) 123-4567"}]}
        response, _ = yield self.post("/v1/chat/completions", body)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.fake.http_requests[0].json["messages"], [{"role": "user", "content": "<masked>: call <PHONE_NUMBER>"}])
        response, _ = yield self.post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "nothing here"}]})
        self.assertEqual(self.fake.http_requests[1].json["messages"], [{"role": "user", "content": "nothing here"}])


class BodyFieldGatewayTests(GatewayCase):
    ai = {"defaults": {"temperature": 0.5}, "overrides": {"user": "agw"}, "modelAliases": {"fast": "gpt-4o-mini"}}

    @inlineCallbacks
    def test_fields_reach_the_provider(self) -> Any:
        response, _ = yield self.post("/v1/chat/completions", {"model": "fast", "user": "client", "messages": []})
        self.assertEqual(response.code, 200)
        seen = self.fake.http_requests[0].json
        # provider.openAI.model still has the last word on the model.
        self.assertEqual((seen["temperature"], seen["user"], seen["model"]), (0.5, "agw", "gpt-4"))


class UnguardedTrafficTests(SynchronousTestCase):
    """A route with guards whose other types are not guarded says so: an operator must not believe them guarded."""

    def test_the_seed_route_with_a_guard_warns_for_passthrough(self) -> None:
        data = yaml.safe_load(seed_config_text(9))
        route = data["binds"][0]["listeners"][0]["routes"][0]
        route["policies"]["ai"]["promptGuard"] = {"request": [{"regex": {"action": "reject", "rules": [{"builtin": "ssn"}]}}]}
        route["policies"]["ai"].setdefault("routes", {"/v1/realtime": "realtime"})["/v1/files"] = "passthrough"
        config = parse_config(yaml.safe_dump(data), {"OPENAI_API_KEY": BACKEND_KEY})
        policies = config.binds[0].listeners[0].routes[0].policies
        self.assertIn("passthrough", unguarded_types(policies))
        self.assertNotIn("realtime", unguarded_types(policies))
        events: list[dict[str, Any]] = []
        self.patch(Gateway, "log", Logger(observer=events.append))
        Gateway(config)
        (line,) = [formatEvent(event) for event in events]
        self.assertIn("promptGuard checks completions, responses and Realtime only", line)
        self.assertIn("passthrough", line)

    def test_no_guard_no_warning(self) -> None:
        self.assertEqual(unguarded_types(Policies()), [])
