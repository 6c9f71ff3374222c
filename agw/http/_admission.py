"""
Whether governance lets an HTTP request go upstream: the consumer's budgets
(which then hold the request's reservation until it is recorded) and the
route's rate limits, refused with agentgateway's rate-limit headers.
"""

from __future__ import annotations

import math

from twisted.web.server import Request

from agw.decisions import Denial, KeyRefused
from agw.metering import HTTPExchange
from agw.routing import RouteContext


def admit(request: Request, exchange: HTTPExchange, context: RouteContext, reads_body: bool) -> None:
    """
    Admit C{request} (its reservation is put on C{exchange}), or raise
    L{KeyRefused}. C{reads_body}: the route type reads the body, so its
    model is known (passthrough: no model, no usage; keys with budgets need
    C{allowPassthrough} there).
    """
    governor = context.governor
    consumer = exchange.who.name if exchange.who is not None else None
    if governor is not None:
        model = exchange.request_model
        decided = governor.admit(consumer, context.metrics.prices(model), model) if reads_body else governor.blocking(consumer)
        if isinstance(decided, Denial):
            if decided.state is not None:
                reset = max(0, int(decided.state.window_end - context.reactor.seconds()))
                limit_headers(request, str(decided.state.budget.amount), str(reset))
            raise KeyRefused(decided.status, decided.message, decided.code)
        if decided is not None:
            exchange.reservation = decided
    limits = context.limits
    empty = limits.admit() if limits is not None else None
    if empty is not None:
        exchange.reservation.release()
        limit_headers(request, str(empty.capacity), str(math.ceil(empty.reset_seconds)))
        raise KeyRefused(429, f"rate limit reached for {empty.kind} on this route", "rate_limit_exceeded")


def limit_headers(request: Request, limit: str, reset: str) -> None:
    """agentgateway's rate-limit headers, for the budget or bucket that refused."""
    request.setHeader(b"x-ratelimit-limit", limit.encode())
    request.setHeader(b"x-ratelimit-remaining", b"0")
    request.setHeader(b"x-ratelimit-reset", reset.encode())
    request.setHeader(b"retry-after", reset.encode())
