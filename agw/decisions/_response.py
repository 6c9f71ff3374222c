"""
Regex response guards on a whole answer (C{promptGuard.response}): the
text of a chat completion's choices or of a Responses API response's
output, masked in place or rejected. Pure: the HTTP forwarder parses the
provider's body, calls L{guard_answer} and sends what it decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agw.config import Guard, RouteType, Scope
from agw.decisions._apply import ALLOW, REJECT, GuardCheck, GuardOutcome, Slot, check_regex, content_slots


def output_slots(response: dict[str, Any]) -> Iterator[Slot]:
    """A Responses API response's answer text: each C{output_text} part's C{text} of its C{output} items."""
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                yield Slot(part, "text", Scope.MESSAGES, "assistant")


def answer_slots(body: dict[str, Any], route_type: RouteType) -> list[Slot]:
    """
    The text of an answer: completions' C{choices[].message.content} (a
    string, or each content part's C{text}); responses' C{output_text}
    parts. Tool calls, refusals and reasoning are not read (as agentgateway).
    """
    if route_type is RouteType.RESPONSES:
        return list(output_slots(body))
    slots: list[Slot] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            slots.extend(content_slots(message, Scope.MESSAGES, "assistant"))
    return slots


def drop_logprobs(body: dict[str, Any], route_type: RouteType) -> None:
    """
    Remove the token log probabilities of an answer whose text a guard
    changed: they spell the original text token by token.
    """
    if route_type is RouteType.RESPONSES:
        for slot in output_slots(body):
            if slot.holder.get("logprobs"):
                slot.holder["logprobs"] = []
        return
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("logprobs") is not None:
            choice["logprobs"] = None


def guard_answer(body: dict[str, Any], route_type: RouteType, guards: tuple[Guard, ...]) -> GuardOutcome:
    """
    Run the regex guards of C{guards} (each keeps its index in
    C{promptGuard.response}; others are skipped) over an answer's text in
    order: matches are masked in place until one guard rejects. The answer
    is in scope C{messages}, which every response guard reads (they have
    no C{scope} of their own, as in agentgateway).
    """
    slots = answer_slots(body, route_type)
    checks = []
    for index, guard in enumerate(guards):
        if guard.regex is None:
            continue
        action = check_regex(guard, slots) if slots else ALLOW
        checks.append(GuardCheck(index, action))
        if action == REJECT:
            return GuardOutcome(tuple(checks), guard.rejection)
    outcome = GuardOutcome(tuple(checks))
    if outcome.masked:
        drop_logprobs(body, route_type)
    return outcome


def has_regex(guards: tuple[Guard, ...]) -> bool:
    """Whether C{guards} has a regex guard (the only kind this module runs)."""
    return any(guard.regex is not None for guard in guards)

