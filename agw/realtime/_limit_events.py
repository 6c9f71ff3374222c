"""
What a client sees in-protocol when a budget or a rate limit stops a
response: an C{error} event shaped like OpenAI's rate-limit errors
(C{code: rate_limit_exceeded}), naming the client's C{event_id} when it gave
one. The session stays open.
"""

from __future__ import annotations

import json
import uuid

# (error type, message): why a response may not start (see RealtimeSession.refusal).
Refusal = tuple[str, str]


def limit_error_event(refusal: Refusal, client_event_id: str | None = None) -> bytes:
    """The C{error} event for C{refusal}."""
    error_type, message = refusal
    error = {"type": error_type, "code": "rate_limit_exceeded", "message": message, "param": None, "event_id": client_event_id}
    return json.dumps({"type": "error", "event_id": f"event_agw_{uuid.uuid4().hex[:20]}", "error": error}).encode()
