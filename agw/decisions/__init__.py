"""
agw's content policies: C{policies.ai.overrides}, C{defaults},
C{modelAliases}, C{prompts} and the guards of C{policies.ai.promptGuard}
(request and response), applied to parsed bodies, Realtime events and
streams of text, and what guard backends (webhook, OpenAI moderation) are
sent and what their answers mean. Pure code (no I/O): the HTTP forwarder and the Realtime
relay call it and answer what it decides.
"""

from agw.decisions._apply import (
    ALLOW,
    FAIL_OPEN,
    MASK,
    REJECT,
    SYSTEM_ROLES,
    UNAVAILABLE,
    GuardCheck,
    GuardOutcome,
    Slot,
    add_prompts,
    apply_rule,
    check_regex,
    content_slots,
    guard_request,
    guard_slots,
    item_slots,
    text_slots,
)
from agw.decisions._backends import (
    REQUEST,
    RESPONSE,
    BadAnswer,
    Verdict,
    forwarded_headers,
    in_scope,
    moderation_payload,
    moderation_verdict,
    webhook_payload,
    webhook_verdict,
)
from agw.decisions._budget_state import BudgetState, amount_of, units_of
from agw.decisions._denial import Denial
from agw.decisions._keys import REALTIME_KEY_PROTOCOL, KeyCheck, KeyRefused, model_matches, presented_key
from agw.decisions._ratelimit import RouteLimits, TokenBucket
from agw.decisions._tokens import TOKEN_KEY_BYTES, TOKEN_PREFIX, CallTokens, Grant, is_token, new_token_key
from agw.decisions._webhooks import (
    DONE,
    NEW,
    PENDING,
    Deliveries,
    Delivery,
    IncomingCall,
    WebhookRefused,
    incoming_call,
    line_for,
    sip_user,
    verify_delivery,
)
from agw.decisions._fields import GUARDED_TYPES, apply_fields, resolve_alias, unguarded_streams, unguarded_types
from agw.decisions._realtime import (
    GUARDED_CLIENT_EVENTS,
    INPUT_TRANSCRIPT,
    OUTPUT_DELTAS,
    OUTPUT_DONE,
    OUTPUT_WHOLE,
    agw_event_id,
    client_event_slots,
    encode,
    enriched_instructions,
    error_event,
    guardrail_error,
    item_role,
    rejection_text,
    response_of,
    stream_key,
    transcript_slots,
    whole_text_holders,
)
from agw.decisions._recognizers import PATTERN_TOKEN, RECOGNIZERS, Recognizer, luhn_valid
from agw.decisions._response import answer_slots, drop_logprobs, guard_answer, has_regex
from agw.decisions._stream import StreamedAnswer, blocked_event
from agw.decisions._window import TextStream, guard_text, mask_before

__all__ = [
    # Keys, rate limits, budgets.
    "BudgetState", "Denial", "KeyCheck", "KeyRefused", "REALTIME_KEY_PROTOCOL", "RouteLimits", "TokenBucket", "amount_of",
    "model_matches", "presented_key", "units_of", "TOKEN_KEY_BYTES", "TOKEN_PREFIX", "CallTokens", "Grant", "is_token", "new_token_key",
    # OpenAI's webhooks (SIP calls).
    "DONE", "NEW", "PENDING", "Deliveries", "Delivery", "IncomingCall", "WebhookRefused", "incoming_call", "line_for", "sip_user",
    "verify_delivery",
    # Content.
    "ALLOW", "FAIL_OPEN", "GuardCheck", "GuardOutcome", "MASK", "PATTERN_TOKEN", "RECOGNIZERS", "REJECT", "Recognizer",
    "SYSTEM_ROLES", "Slot", "TextStream", "add_prompts", "apply_fields", "apply_rule", "check_regex", "content_slots",
    "guard_request", "guard_slots", "guard_text", "item_slots", "mask_before", "resolve_alias", "luhn_valid", "text_slots",
    "GUARDED_TYPES", "unguarded_streams", "unguarded_types", "StreamedAnswer", "answer_slots", "drop_logprobs", "blocked_event", "guard_answer", "has_regex",
    # Realtime events.
    "GUARDED_CLIENT_EVENTS", "INPUT_TRANSCRIPT", "OUTPUT_DELTAS", "OUTPUT_DONE", "OUTPUT_WHOLE", "agw_event_id", "client_event_slots", "encode", "error_event",
    "enriched_instructions", "guardrail_error", "item_role", "rejection_text", "response_of", "stream_key", "transcript_slots",
    "whole_text_holders",
    "UNAVAILABLE", "REQUEST", "RESPONSE", "BadAnswer", "Verdict", "forwarded_headers",
    "in_scope", "moderation_payload", "moderation_verdict", "webhook_payload", "webhook_verdict",
]
