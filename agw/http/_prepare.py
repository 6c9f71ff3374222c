"""
A parsed request body made ready for the provider, in agentgateway's
order: C{overrides}, C{defaults} and C{modelAliases}, the backend's
model, then C{prompts}, then the request guards
(which may mask it, or refuse it with L{GuardRejected}; those that call
out make it wait, see L{agw.http._guard_calls}); and, for a streamed
completion, the usage agw needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from agw.config import DEFAULT_REJECTION, Rejection, RouteType
from agw.decisions import REQUEST, GuardOutcome, add_prompts, apply_fields, guard_slots, text_slots
from agw.http._request_body import json_object
from agw.metering import HTTPExchange
from agw.routing import RouteContext, error_body


class GuardRejected(Exception):
    """
    A request guard rejected the request: answered with C{rejection},
    nothing goes upstream. C{unavailable}: a guard backend failed and
    fails closed (answered 503 instead).
    """

    def __init__(self, rejection: Rejection, unavailable: bool = False) -> None:
        super().__init__(rejection.status)
        self.rejection = rejection
        self.unavailable = unavailable


def prepare_json(
    raw: bytes, route_type: RouteType, context: RouteContext, exchange: HTTPExchange,
    headers: Mapping[str, str] | None = None, parsed: dict[str, Any] | None = None,
) -> bytes | Deferred[bytes]:
    """
    The body to send upstream for C{raw} (C{parsed}: decoded already, by
    L{agw.http._request_body.json_object}); notes the request model, stream
    usage and guard checks on C{exchange}. Raises L{GuardRejected} or
    L{agw.http._request_body.Refused}. When a guard calls out (webhook,
    moderation; C{headers} are the client's, for a webhook's
    C{forwardHeaderMatches}) a Deferred instead, which may fail with
    L{GuardRejected}: without one, nothing waits, as before such guards.
    """
    body: dict[str, Any] = parsed if parsed is not None else json_object(raw)
    policies = context.policies
    changed = apply_fields(body, policies)
    override = context.model_override
    if override is not None and body.get("model") != override:
        body["model"] = override
        changed = True
    model = body.get("model")
    exchange.request_model = model if isinstance(model, str) else None
    if route_type in (RouteType.COMPLETIONS, RouteType.RESPONSES):
        changed = add_prompts(body, route_type, policies.prompts) or changed
        guards = policies.prompt_guard.request
        if guards:
            slots, calls = text_slots(body, route_type), context.guard_calls
            if any(guard.regex is None for guard in guards):
                if calls is None:
                    raise ValueError("webhook and openAIModeration guards need RouteContext.guard_calls (a GuardCalls)")
                checking = calls.check(guards, slots, REQUEST, headers or {})
                return checking.addCallback(_guarded, body, route_type, exchange, raw, changed)
            return _guarded(guard_slots(slots, guards), body, route_type, exchange, raw, changed)
    return _finish(body, route_type, exchange, raw, changed)


def _guarded(
    outcome: GuardOutcome, body: dict[str, Any], route_type: RouteType, exchange: HTTPExchange, raw: bytes, changed: bool,
) -> bytes:
    exchange.guard_checks = tuple((REQUEST, check.index, check.action) for check in outcome.checks)
    if outcome.rejection is not None:
        raise GuardRejected(outcome.rejection, outcome.unavailable)
    return _finish(body, route_type, exchange, raw, outcome.masked or changed)


def _finish(body: dict[str, Any], route_type: RouteType, exchange: HTTPExchange, raw: bytes, changed: bool) -> bytes:
    if route_type is RouteType.COMPLETIONS and body.get("stream") is True:
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            # Without it a streamed completion reports no usage at all;
            # the client that did not ask for it will not see it.
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            exchange.hide_stream_usage = changed = True
    return json.dumps(body).encode() if changed else raw


def write_rejection(request: Request, rejection: Rejection) -> None:
    """Answer C{request} with C{rejection}: its body as configured, else an OpenAI-shaped error with agentgateway's text."""
    request.setResponseCode(rejection.status)
    if rejection.body is None:
        request.setHeader(b"content-type", b"application/json")
        data = error_body(DEFAULT_REJECTION, "invalid_request_error", "guardrail_rejected")
    else:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        data = rejection.body.encode("utf-8")
    headers = request.responseHeaders
    for name, value in rejection.add:
        headers.addRawHeader(name, value)
    for name, value in rejection.set:
        headers.setRawHeaders(name, [value])
    for name in rejection.remove:
        headers.removeHeader(name)
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()
