"""
C{policies.ai.promptGuard} and C{policies.ai.prompts} as data: regex guards
on requests and the messages added around a request's own. What they do
to a body is L{agw.guardrails}'s business.
"""

from __future__ import annotations

import re
from enum import Enum

from attrs import field, frozen


class Builtin(str, Enum):
    """agentgateway's built-in recognizers (C{rules[].builtin})."""

    SSN = "ssn"
    CREDIT_CARD = "creditCard"
    PHONE_NUMBER = "phoneNumber"
    EMAIL = "email"
    CA_SIN = "caSin"


class GuardAction(str, Enum):
    """C{regex.action}: what a match does (agentgateway's default: mask)."""

    MASK = "mask"
    REJECT = "reject"


#: agentgateway's default rejection text (its C{rejection.body} default).
DEFAULT_REJECTION = "The request was rejected due to inappropriate content"


@frozen
class RegexRule:
    """One C{rules[]} entry: a built-in recognizer or a compiled pattern, exactly one."""

    builtin: Builtin | None = None
    pattern: re.Pattern[str] | None = None


@frozen
class Rejection:
    """
    C{rejection}: the answer to a rejected request. C{body} C{None} is
    agw's OpenAI-shaped error with agentgateway's default text; a
    configured body is sent as it is.
    """

    status: int = 403
    body: str | None = None
    # HeaderModifier of the answer: (name, value) pairs added, set; names removed.
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@frozen
class RegexGuard:
    """A C{promptGuard.request[]} entry with C{regex}: its rules, in order, and what a match does."""

    rules: tuple[RegexRule, ...]
    action: GuardAction = GuardAction.MASK
    rejection: Rejection = field(factory=Rejection)


@frozen
class PromptMessage:
    """A C{prompts.prepend[]}/C{append[]} entry: a chat message."""

    role: str
    content: str


@frozen
class Prompts:
    """C{policies.ai.prompts}: messages put before and after the client's own."""

    prepend: tuple[PromptMessage, ...] = ()
    append: tuple[PromptMessage, ...] = ()
