"""
Parses C{policies.ai.promptGuard} (regex, webhook and openAIModeration
guards on requests and responses) and C{policies.ai.prompts}; the other
guard kinds are refused as not supported by agw yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

import regex

from agw.config._guardrails import (
    DEFAULT_SCOPE,
    MODERATION_URL,
    Builtin,
    FailureMode,
    Guard,
    GuardAction,
    HeaderMatch,
    Moderation,
    PromptGuard,
    PromptMessage,
    Prompts,
    RegexGuard,
    RegexRule,
    Rejection,
    Scope,
    Webhook,
)
from agw.config._model import HeaderTransform
from agw.config._parsing import BaseParser, kind_of
from agw.config._yamlsource import Path


_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


_DURATION = re.compile(r"(\d+)(ms|s|m)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60}


class GuardParser(BaseParser):
    """Parses guards and prompts (mixed into the policy parser, which provides C{backend_auth})."""

    backend_auth: Any

    def prompt_guard(self, value: Any, path: Path) -> PromptGuard:
        spec = self.mapping(value, path, "promptGuard")
        streaming = spec.get("streaming", "Disabled")
        if streaming not in ("Disabled", "Enabled"):
            raise self.fail(path + ("streaming",), f"expected Disabled or Enabled, got {streaming!r}")
        hold = spec.get("holdChars", 64)
        if not isinstance(hold, int) or isinstance(hold, bool) or not 0 <= hold <= 4096:
            raise self.fail(path + ("holdChars",), f"expected a number of characters (0-4096), got {hold!r}")
        return PromptGuard(
            request=self.items(spec.get("request"), path + ("request",), self.request_guard),
            response=self.items(spec.get("response"), path + ("response",), self.response_guard),
            streaming=streaming == "Enabled",
            hold_chars=hold,
            hold_for_transcript=self.guard_timeout(spec["holdForTranscript"], path + ("holdForTranscript",)) if "holdForTranscript" in spec else 0.0,
        )

    def request_guard(self, value: Any, path: Path, index: int) -> Guard:
        return self.guard(self.mapping(value, path, "requestGuard"), path)

    def response_guard(self, value: Any, path: Path, index: int) -> Guard:
        if isinstance(value, dict) and "openAIModeration" in value:
            raise self.fail(path + ("openAIModeration",), "openAIModeration guards requests only (as agentgateway)")
        return self.guard(self.mapping(value, path, "responseGuard"), path)

    def guard(self, spec: dict[str, Any], path: Path) -> Guard:
        kinds = [name for name in ("regex", "webhook", "openAIModeration") if name in spec]
        if len(kinds) != 1:
            raise self.fail(path, "expected exactly one of regex, webhook, openAIModeration")
        rejection = self.rejection(spec["rejection"], path + ("rejection",)) if "rejection" in spec else Rejection()
        scope = self.scope(spec["scope"], path + ("scope",)) if "scope" in spec else DEFAULT_SCOPE
        kind = kinds[0]
        if kind != "regex" and set(scope) != set(DEFAULT_SCOPE):
            # As agentgateway: only regex guards read a scope of their choice.
            raise self.fail(path + ("scope",), f"only regex guards support a non-default scope; {kind} guards always read systemPrompt and messages")
        if kind == "regex":
            return Guard(regex=self.regex_guard(spec["regex"], path + ("regex",)), scope=scope, rejection=rejection)
        if kind == "webhook":
            return Guard(webhook=self.webhook(spec["webhook"], path + ("webhook",)), scope=scope, rejection=rejection)
        return Guard(moderation=self.moderation(spec["openAIModeration"], path + ("openAIModeration",)), scope=scope, rejection=rejection)

    def regex_guard(self, value: Any, path: Path) -> RegexGuard:
        regex = self.mapping(value, path, "regexGuard")
        action_text = self.string(regex.get("action", "mask"), path + ("action",))
        try:
            action = GuardAction(action_text)
        except ValueError:
            raise self.fail(path + ("action",), f"expected mask or reject, got {action_text!r}") from None
        rules = self.items(regex.get("rules"), path + ("rules",), self.regex_rule, required=True)
        if not rules:
            raise self.fail(path + ("rules",), "at least one rule is required")
        return RegexGuard(rules=rules, action=action)

    def scope(self, value: Any, path: Path) -> tuple[Scope, ...]:
        def one(item: Any, where: Path, index: int) -> Scope:
            try:
                return Scope(item)
            except ValueError:
                choices = ", ".join(s.value for s in Scope)
                raise self.fail(where, f"unknown scope {item!r} (one of {choices})") from None

        scope = self.items(value, path, one, required=True)
        if not scope:
            raise self.fail(path, "scope must not be empty; omit it to use the default (systemPrompt + messages)")
        return scope

    def failure_mode(self, value: Any, path: Path, default: FailureMode) -> FailureMode:
        if value is None:
            return default
        try:
            return FailureMode(value)
        except ValueError:
            raise self.fail(path, f"expected failClosed or failOpen, got {value!r}") from None

    def guard_timeout(self, value: Any, path: Path) -> float:
        """agw's C{timeout} of a guard backend call: a duration such as 500ms or 10s (default 10s, as agentgateway)."""
        if value is None:
            return 10.0
        text = self.string(value, path).strip()
        parts = _DURATION.findall(text)
        seconds = sum(int(number) * _SECONDS[unit] for number, unit in parts)
        if not parts or "".join(number + unit for number, unit in parts) != text or not 0 < seconds <= 300:
            raise self.fail(path, f"expected a duration between 1ms and 5m such as 500ms or 10s, got {value!r}")
        return float(seconds)

    def webhook(self, value: Any, path: Path) -> Webhook:
        spec = self.mapping(value, path, "webhook")
        target = self.mapping(spec.get("target"), path + ("target",), "webhookTarget")
        if "host" not in target:
            raise self.fail(path + ("target",), "expected target.host (host:port)")
        host = self.string(target["host"], path + ("target", "host"))
        if not _HOST_PORT.fullmatch(host):
            raise self.fail(path + ("target", "host"), f"expected host:port, got {host!r}")
        return Webhook(
            host=host,
            forward_header_matches=self.items(spec.get("forwardHeaderMatches"), path + ("forwardHeaderMatches",), self.header_match),
            failure_mode=self.failure_mode(spec.get("failureMode"), path + ("failureMode",), FailureMode.FAIL_CLOSED),
            timeout=self.guard_timeout(spec.get("timeout"), path + ("timeout",)),
        )

    def header_match(self, value: Any, path: Path, index: int) -> HeaderMatch:
        spec = self.mapping(value, path, "headerMatch")
        name = self.string(spec.get("name"), path + ("name",)).lower()
        match = self.mapping(spec.get("value"), path + ("value",), "headerValueMatch")
        if ("exact" in match) == ("regex" in match):
            raise self.fail(path + ("value",), "expected exactly one of exact, regex")
        if "exact" in match:
            return HeaderMatch(name=name, exact=self.string(match["exact"], path + ("value", "exact")))
        text = self.string(match["regex"], path + ("value", "regex"))
        try:
            return HeaderMatch(name=name, pattern=re.compile(text))
        except re.error as e:
            raise self.fail(path + ("value", "regex"), f"not a valid regular expression: {e}") from None

    def moderation(self, value: Any, path: Path) -> Moderation:
        spec = self.mapping(value, path, "openAIModeration")
        policies = self.mapping(spec.get("policies"), path + ("policies",), "moderationPolicies")
        key = None
        if policies.get("backendAuth") is not None:
            key, location = self.backend_auth(policies["backendAuth"], path + ("policies", "backendAuth"))
            if location is not None:  # the moderation call sends its key as Authorization: Bearer, as OpenAI wants
                raise self.fail(path + ("policies", "backendAuth", "key", "location"), "supported by agentgateway but not by agw yet")
        tls = self.mapping(policies.get("backendTLS"), path + ("policies", "backendTLS"), "backendTLS")
        if "hostname" in tls:  # verified for the url's host
            raise self.fail(path + ("policies", "backendTLS", "hostname"), "supported by agentgateway but not by agw yet")
        url = self.string(spec.get("url", MODERATION_URL), path + ("url",))
        if not url.startswith(("http://", "https://")):
            raise self.fail(path + ("url",), f"expected an http:// or https:// URL, got {url!r}")
        return Moderation(
            model=self.string(spec.get("model", "omni-moderation-latest"), path + ("model",)),
            url=url,
            key=key,
            tls_root=self.string(tls.get("root"), path + ("policies", "backendTLS", "root"), optional=True),
            timeout=self.guard_timeout(spec.get("timeout"), path + ("timeout",)),
            failure_mode=self.failure_mode(spec.get("failureMode"), path + ("failureMode",), FailureMode.FAIL_OPEN),
        )

    def regex_rule(self, value: Any, path: Path, index: int) -> RegexRule:
        spec = self.mapping(value, path, "regexRule")
        if ("builtin" in spec) == ("pattern" in spec):
            raise self.fail(path, "expected exactly one of builtin, pattern")
        if "builtin" in spec:
            name = self.string(spec["builtin"], path + ("builtin",))
            try:
                return RegexRule(builtin=Builtin(name))
            except ValueError:
                choices = ", ".join(b.value for b in Builtin)
                raise self.fail(path + ("builtin",), f"unknown builtin {name!r} (one of {choices})") from None
        text = self.string(spec["pattern"], path + ("pattern",))
        try:
            pattern = re.compile(text)
        except re.error as e:
            raise self.fail(path + ("pattern",), f"not a valid regular expression: {e}") from None
        try:
            partial = regex.compile(text)
        except regex.error:
            partial = None  # the regex module reads a few patterns otherwise: such a rule holds holdChars in streams
        return RegexRule(pattern=pattern, partial=partial)

    def rejection(self, value: Any, path: Path) -> Rejection:
        spec = self.mapping(value, path, "rejection")
        status = spec.get("status", 403)
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise self.fail(path + ("status",), f"expected an HTTP status (200-599), got {status!r}")
        body = self.string(spec.get("body"), path + ("body",), optional=True)
        headers = self.header_transform(spec.get("headers"), path + ("headers",))
        return Rejection(status=status, body=body, add=headers.add, set=headers.set, remove=headers.remove)

    def prompts(self, value: Any, path: Path) -> Prompts:
        spec = self.mapping(value, path, "prompts")
        return Prompts(
            prepend=self.items(spec.get("prepend"), path + ("prepend",), self.prompt_message),
            append=self.items(spec.get("append"), path + ("append",), self.prompt_message),
        )

    def prompt_message(self, value: Any, path: Path, index: int) -> PromptMessage:
        spec = self.mapping(value, path, "promptMessage")
        for name in ("role", "content"):
            if not isinstance(spec.get(name), str):
                raise self.fail(path + (name,), f"expected a string, got {kind_of(spec.get(name))}")
        return PromptMessage(role=spec["role"], content=spec["content"])

    def body_fields(self, value: Any, path: Path) -> tuple[tuple[str, str], ...]:
        """C{defaults}/C{overrides}: request body field -> any value, kept as JSON text."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of body field to value, got {kind_of(value)}")
        try:
            return tuple((str(name), json.dumps(field)) for name, field in value.items())
        except (TypeError, ValueError):
            raise self.fail(path, "expected values JSON can carry (strings, numbers, booleans, null, lists, mappings)") from None

    def model_aliases(self, value: Any, path: Path) -> tuple[tuple[str, str], ...]:
        """C{modelAliases}: requested model (exact, or with C{*} wildcards) -> the model sent."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of model name to model name, got {kind_of(value)}")
        return tuple((str(name), self.string(target, path + (name,))) for name, target in value.items())

    def header_transform(self, value: Any, path: Path) -> HeaderTransform:
        request = self.mapping(value, path, "requestTransform")
        remove = self.items(request.get("remove"), path + ("remove",), lambda v, p, i: self.string(v, p).lower())
        return HeaderTransform(
            remove=remove,
            add=self.header_values(request.get("add"), path + ("add",)),
            set=self.header_values(request.get("set"), path + ("set",)),
        )

    def header_values(self, value: Any, path: Path) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of header name to value, got {kind_of(value)}")
        result = []
        for name, text in value.items():
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                raise self.fail(path + (name,), f"expected a literal string value, got {kind_of(text)}")
            result.append((name.lower(), str(text)))
        return tuple(result)
