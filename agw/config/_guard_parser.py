"""
Parses C{policies.ai.promptGuard} (regex request guards only) and
C{policies.ai.prompts}; the other guard kinds, response guards and
streaming are refused as not supported by agw yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agw.config._guardrails import (
    Builtin,
    GuardAction,
    PromptMessage,
    Prompts,
    RegexGuard,
    RegexRule,
    Rejection,
)
from agw.config._model import HeaderTransform
from agw.config._parsing import BaseParser, kind_of
from agw.config._yamlsource import Path


class GuardParser(BaseParser):
    """Parses guards and prompts (mixed into the policy parser)."""

    def prompt_guard(self, value: Any, path: Path) -> tuple[RegexGuard, ...]:
        spec = self.mapping(value, path, "promptGuard")
        return self.items(spec.get("request"), path + ("request",), self.request_guard)

    def request_guard(self, value: Any, path: Path, index: int) -> RegexGuard:
        spec = self.mapping(value, path, "requestGuard")
        if "regex" not in spec:
            raise self.fail(path, "expected a regex guard (the only kind agw supports yet)")
        regex = self.mapping(spec["regex"], path + ("regex",), "regexGuard")
        action_text = self.string(regex.get("action", "mask"), path + ("regex", "action"))
        try:
            action = GuardAction(action_text)
        except ValueError:
            raise self.fail(path + ("regex", "action"), f"expected mask or reject, got {action_text!r}") from None
        rules = self.items(regex.get("rules"), path + ("regex", "rules"), self.regex_rule, required=True)
        if not rules:
            raise self.fail(path + ("regex", "rules"), "at least one rule is required")
        rejection = self.rejection(spec["rejection"], path + ("rejection",)) if "rejection" in spec else Rejection()
        return RegexGuard(rules=rules, action=action, rejection=rejection)

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
            return RegexRule(pattern=re.compile(text))
        except re.error as e:
            raise self.fail(path + ("pattern",), f"not a valid regular expression: {e}") from None

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
