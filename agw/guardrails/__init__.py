"""
agw's request-body policies: C{policies.ai.overrides}, C{defaults},
C{modelAliases}, C{prompts} and the regex guards of
C{policies.ai.promptGuard.request}, applied to a parsed request body.
Pure code (no I/O): the HTTP forwarder calls it and answers a rejection.
"""

from agw.guardrails._apply import (
    ALLOW,
    MASK,
    REJECT,
    GuardCheck,
    GuardOutcome,
    add_prompts,
    guard_request,
    text_slots,
)
from agw.guardrails._fields import GUARDED_TYPES, apply_fields, resolve_alias, unguarded_types
from agw.guardrails._recognizers import PATTERN_TOKEN, RECOGNIZERS, Recognizer, luhn_valid

__all__ = [
    "ALLOW", "GuardCheck", "GuardOutcome", "MASK", "PATTERN_TOKEN", "RECOGNIZERS", "REJECT", "Recognizer",
    "add_prompts", "apply_fields", "guard_request", "resolve_alias", "luhn_valid", "text_slots",
    "GUARDED_TYPES", "unguarded_types",
]
