"""
Why a request or a Realtime response may not start (L{Denial}): one value
for every refusal of governance — budgets, rate limits, unpriced models, an
unread ledger — carrying the HTTP status and OpenAI-shaped error it becomes
on HTTP, at a Realtime handshake, and in-protocol.
"""

from __future__ import annotations

from attrs import frozen

from agw.config import BudgetUnit
from agw.decisions._budget_state import BudgetState

RATE_LIMITED = "rate_limit_exceeded"


@frozen
class Denial:
    """
    A refusal: C{status} (HTTP), C{code} and C{error_type} (OpenAI's error
    fields; Realtime rate-limit errors use C{tokens}/C{requests} as their
    type), C{message}; C{state} is the budget that refused, if one did.
    C{final}: nothing changes it before the budget's window ends (spent, or
    a model without a price), unlike a wait for responses in flight or for
    a rate-limit bucket to fill.
    """

    status: int
    code: str
    error_type: str
    message: str
    state: BudgetState | None = None
    final: bool = False

    @classmethod
    def _over_budget(cls, state: BudgetState, message: str, final: bool = False) -> Denial:
        """A budget's refusal: a rate-limit error, typed by the budget's unit (C{tokens} or C{requests})."""
        error_type = "tokens" if state.budget.unit is BudgetUnit.TOKENS else "requests"
        return cls(429, RATE_LIMITED, error_type, f"Budget {state.budget.name!r} of this API key {message}", state, final)

    @classmethod
    def exhausted(cls, state: BudgetState) -> Denial:
        return cls._over_budget(state, (
            f"is exhausted: {state.spent} of {state.limit} {_unit(state)} used in the current window, "
            f"which ends at Unix time {state.window_end}."
        ), final=True)

    @classmethod
    def in_flight(cls, state: BudgetState, count: int) -> Denial:
        return cls._over_budget(state, (
            f"has {state.remaining} {_unit(state)} left, less than another response may cost while {count} of this "
            "key's responses are in flight: try again when they are done."
        ))

    @classmethod
    def share_used(cls, state: BudgetState, sharers: int, ledger_down: bool) -> Denial:
        until = "the budget ledger answers again" if ledger_down else "it reads everyone's spend again (each second)"
        return cls._over_budget(state, (
            f"is shared by {sharers} gateway processes, and this one has used its share of what is left until {until}: "
            "try again shortly."
        ), final=ledger_down)

    @classmethod
    def unpriced(cls, model: str | None, budget: str) -> Denial:
        return cls(403, "model_not_priced", "invalid_request_error", (
            f"model {model!r} has no price in the gateway's model catalog, and budget {budget!r} of this API key "
            "is in USD: the gateway cannot count what it would cost (ask the operator to price it in config.modelCatalog)."
        ), final=True)

    @classmethod
    def ledger_unread(cls) -> Denial:
        return cls(503, "budget_ledger_unavailable", "server_error", (
            "the budgets of this API key cannot be checked yet: the gateway has not read its budget ledger since it "
            "started; try again shortly."
        ))

    @classmethod
    def rate_limited(cls, kind: str, capacity: int, reset_seconds: float) -> Denial:
        return cls(429, RATE_LIMITED, kind, (
            f"Rate limit reached for {kind} on this route (localRateLimit of {capacity}); try again in {reset_seconds:.3f}s."
        ))

    @classmethod
    def too_many_unacknowledged(cls, limit: int) -> Denial:
        return cls(429, RATE_LIMITED, "requests", (
            f"{limit} response.create events of this session are still waiting for the provider's answer: "
            "wait for response.created (or an error) before sending more."
        ))


def _unit(state: BudgetState) -> str:
    return "tokens" if state.budget.unit is BudgetUnit.TOKENS else "USD"
