"""
What C{prompts} and C{promptGuard.request} do to a parsed request body
(completions or responses), in agentgateway's order: prompts first, then
each guard in turn. Pure: the body is changed in place, nothing is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from attrs import frozen

from agw.config import GuardAction, Prompts, RegexGuard, RegexRule, Rejection, RouteType
from agw.guardrails._recognizers import PATTERN_TOKEN, RECOGNIZERS

ALLOW, MASK, REJECT = "allow", "mask", "reject"

# A place in the body that holds text: the object and its key.
Slot = tuple[dict[str, Any], str]


@frozen
class GuardCheck:
    """What guard C{index} (its place in C{promptGuard.request}) did: allow, mask or reject."""

    index: int
    action: str


@frozen
class GuardOutcome:
    """Every guard that ran, in order; C{rejection} set if the last one rejected the request."""

    checks: tuple[GuardCheck, ...] = ()
    rejection: Rejection | None = None

    @property
    def masked(self) -> bool:
        """Whether any guard changed the body."""
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


def _content_slots(holder: dict[str, Any]) -> Iterator[Slot]:
    """A message's text: C{content} as a string, or each content part's C{text}."""
    content = holder.get("content")
    if isinstance(content, str):
        yield holder, "content"
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part, "text"


def text_slots(body: dict[str, Any], route_type: RouteType) -> list[Slot]:
    """Every text a guard reads: completions' messages; responses' instructions and input."""
    slots: list[Slot] = []
    if route_type is RouteType.COMPLETIONS:
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict):
                slots.extend(_content_slots(message))
    elif route_type is RouteType.RESPONSES:
        for key in ("instructions", "input"):
            if isinstance(body.get(key), str):
                slots.append((body, key))
        items = body.get("input")
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                slots.extend(_content_slots(item))
    return slots


def _apply_rule(rule: RegexRule, text: str) -> tuple[str, int]:
    if rule.builtin is not None:
        return RECOGNIZERS[rule.builtin].mask(text)
    assert rule.pattern is not None
    return rule.pattern.subn(PATTERN_TOKEN, text)


def _check(guard: RegexGuard, slots: list[Slot]) -> str:
    """Run one guard over every slot: reject at the first match (action reject), else mask each match."""
    masked = False
    for holder, key in slots:
        text = holder[key]
        for rule in guard.rules:  # in order, each on what the last left
            text, found = _apply_rule(rule, text)
            if found and guard.action is GuardAction.REJECT:
                return REJECT
            masked = masked or found > 0
        holder[key] = text
    return MASK if masked else ALLOW


def guard_request(body: dict[str, Any], route_type: RouteType, guards: tuple[RegexGuard, ...]) -> GuardOutcome:
    """Run C{guards} over C{body} in order; matches are masked in place until one guard rejects."""
    slots = text_slots(body, route_type)
    checks = []
    for index, guard in enumerate(guards):
        action = _check(guard, slots)
        checks.append(GuardCheck(index, action))
        if action == REJECT:
            return GuardOutcome(tuple(checks), guard.rejection)
    return GuardOutcome(tuple(checks))
