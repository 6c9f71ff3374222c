"""
What a client sees in-protocol when a budget or a rate limit stops a
response: an C{error} event shaped like OpenAI's rate-limit errors
(C{code: rate_limit_exceeded}; C{model_not_priced} for a USD budget
and a model without a price), naming the client's C{event_id} when it gave
one. The session stays open.
"""

from __future__ import annotations

from agw.decisions import Denial, error_event


def limit_error_event(refusal: Denial, client_event_id: str | None = None) -> bytes:
    """The C{error} event for C{refusal} (see L{agw.metering.RealtimeSession.refusal})."""
    error = {
        "type": refusal.error_type, "code": refusal.code, "message": refusal.message, "param": None,
        "event_id": client_event_id,
    }
    return error_event(error)
