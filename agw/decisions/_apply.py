"""
What C{prompts} and the regex guards of C{promptGuard} do to a parsed
request body (completions or responses), in agentgateway's order: prompts
first, then each guard in turn. Pure: the body is changed in place,
nothing is sent. Guards read L{Slot}s: the places in a body that hold
text, each with the C{scope} it belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from attrs import define, frozen

from agw.config import Guard, GuardAction, Prompts, RegexRule, Rejection, RouteType, Scope
from agw.decisions._recognizers import PATTERN_TOKEN, RECOGNIZERS

ALLOW, MASK, REJECT = "allow", "mask", "reject"
# agentgateway's action for a guard backend that failed while failing open.
FAIL_OPEN = "failOpen"

#: The rejection of a guard whose backend failed while failing closed.
UNAVAILABLE = Rejection(status=503)

# Roles whose message is the system prompt (scope systemPrompt).
SYSTEM_ROLES = frozenset({"system", "developer"})


@define
class Slot:
    """A place in a body that holds text: C{holder[key]}, in C{scope}; C{role} for a webhook's messages."""

    holder: dict[str, Any]
    key: str
    scope: Scope
    role: str = "user"

    @property
    def text(self) -> str:
        return self.holder[self.key]  # type: ignore[no-any-return]

    @text.setter
    def text(self, value: str) -> None:
        self.holder[self.key] = value


@frozen
class GuardCheck:
    """What guard C{index} (its place in its list) of C{kind} did: allow, mask, reject or failOpen."""

    index: int
    action: str
    kind: str = "regex"


@frozen
class GuardOutcome:
    """
    Every guard that ran, in order; C{rejection} set if the last one
    rejected. C{unavailable}: it rejected because its backend failed and
    fails closed (C{rejection} is then L{UNAVAILABLE}; agw answers 503,
    C{guardrail_unavailable}).
    """

    checks: tuple[GuardCheck, ...] = ()
    rejection: Rejection | None = None
    unavailable: bool = False

    @property
    def masked(self) -> bool:
        """Whether any guard changed the text."""
        return any(check.action == MASK for check in self.checks)


def add_prompts(body: dict[str, Any], route_type: RouteType, prompts: Prompts) -> bool:
    """Put C{prompts} around the body's messages (completions) or input items (responses); whether it changed."""
    if not prompts.prepend and not prompts.append:
        return False
    before = [{"role": m.role, "content": m.content} for m in prompts.prepend]
    after = [{"role": m.role, "content": m.content} for m in prompts.append]
    if route_type is RouteType.COMPLETIONS:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return False  # not a chat request: the provider will say so
        body["messages"] = before + messages + after
        return True
    if route_type is RouteType.RESPONSES:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]  # the Responses API's reading of a string input
        elif items is None:
            items = []
        if not isinstance(items, list):
            return False
        body["input"] = before + items + after
        return True
    return False


def content_slots(holder: dict[str, Any], scope: Scope, role: str) -> Iterator[Slot]:
    """A message's text: C{content} as a string, or each content part's C{text} (or audio C{transcript})."""
    content = holder.get("content")
    if isinstance(content, str):
        yield Slot(holder, "content", scope, role)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                for key in ("text", "transcript"):
                    if isinstance(part.get(key), str):
                        yield Slot(part, key, scope, role)


def item_slots(item: dict[str, Any]) -> Iterator[Slot]:
    """
    The text of one conversation item (Responses input, Realtime
    C{conversation.item.create}): a message's content, a function call's
    C{arguments} (toolInput), a function call output's C{output} (toolOutput).
    """
    kind = item.get("type")
    if kind == "function_call":
        if isinstance(item.get("arguments"), str):
            yield Slot(item, "arguments", Scope.TOOL_INPUT, "assistant")
        return
    if kind == "function_call_output":
        if isinstance(item.get("output"), str):
            yield Slot(item, "output", Scope.TOOL_OUTPUT, "tool")
        return
    role = item.get("role")
    role = role if isinstance(role, str) else "user"
    yield from content_slots(item, Scope.SYSTEM_PROMPT if role in SYSTEM_ROLES else Scope.MESSAGES, role)


def _message_slots(message: dict[str, Any]) -> Iterator[Slot]:
    """A chat completions message: content by role, and an assistant's tool call arguments."""
    role = message.get("role")
    role = role if isinstance(role, str) else "user"
    scope = Scope.SYSTEM_PROMPT if role in SYSTEM_ROLES else Scope.TOOL_OUTPUT if role == "tool" else Scope.MESSAGES
    yield from content_slots(message, scope, role)
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield Slot(function, "arguments", Scope.TOOL_INPUT, role)


def text_slots(body: dict[str, Any], route_type: RouteType) -> list[Slot]:
    """Every text a guard may read: completions' messages; responses' instructions and input."""
    slots: list[Slot] = []
    if route_type is RouteType.COMPLETIONS:
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict):
                slots.extend(_message_slots(message))
    elif route_type is RouteType.RESPONSES:
        if isinstance(body.get("instructions"), str):
            slots.append(Slot(body, "instructions", Scope.SYSTEM_PROMPT, "system"))
        items = body.get("input")
        if isinstance(items, str):
            slots.append(Slot(body, "input", Scope.MESSAGES))
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                slots.extend(item_slots(item))
    return slots


def apply_rule(rule: RegexRule, text: str) -> tuple[str, int]:
    """C{text} with C{rule}'s matches replaced by its token, and how many were."""
    if rule.builtin is not None:
        return RECOGNIZERS[rule.builtin].mask(text)
    assert rule.pattern is not None
    return rule.pattern.subn(PATTERN_TOKEN, text)


def check_regex(guard: Guard, slots: Iterable[Slot]) -> str:
    """Run one regex guard over the slots in its scope: reject at the first match (action reject), else mask each match."""
    regex = guard.regex
    assert regex is not None
    masked = False
    for slot in slots:
        if slot.scope not in guard.scope:
            continue
        text = slot.text
        for rule in regex.rules:  # in order, each on what the last left
            text, found = apply_rule(rule, text)
            if found and regex.action is GuardAction.REJECT:
                return REJECT
            masked = masked or found > 0
        slot.text = text
    return MASK if masked else ALLOW


def guard_slots(slots: list[Slot], guards: tuple[Guard, ...]) -> GuardOutcome:
    """Run regex C{guards} over C{slots} in order; matches are masked in place until one guard rejects."""
    checks = []
    for index, guard in enumerate(guards):
        action = check_regex(guard, slots)
        checks.append(GuardCheck(index, action))
        if action == REJECT:
            return GuardOutcome(tuple(checks), guard.rejection)
    return GuardOutcome(tuple(checks))


def guard_request(body: dict[str, Any], route_type: RouteType, guards: tuple[Guard, ...]) -> GuardOutcome:
    """Run regex C{guards} over C{body}'s text (see L{text_slots}) in order."""
    return guard_slots(text_slots(body, route_type), guards)
