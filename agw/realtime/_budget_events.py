"""
What a client sees in-protocol when a budget stops a response: an C{error}
event shaped like OpenAI's rate-limit errors (C{code: rate_limit_exceeded}),
naming the client's C{event_id} when it gave one. The session stays open.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def budget_error_event(state: Any, client_event_id: str | None = None) -> bytes:
    """The C{error} event for an exhausted budget (an L{agw.metering.BudgetState})."""
    budget = state.budget
    tokens = budget.unit.value == "Tokens"
    message = (
        f"Budget {budget.name!r} of this API key is exhausted: {state.spent} of {budget.amount} "
        f"{'tokens' if tokens else 'USD'} used in the current window, which ends at Unix time {state.window_end}."
    )
    error = {
        "type": "tokens" if tokens else "requests", "code": "rate_limit_exceeded", "message": message,
        "param": None, "event_id": client_event_id,
    }
    return json.dumps({"type": "error", "event_id": f"event_agw_{uuid.uuid4().hex[:20]}", "error": error}).encode()
