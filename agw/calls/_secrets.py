"""
C{POST …/realtime/client_secrets}: a client key (never a client secret)
asks for a secret for one model; agw checks the key's allowed models and
budgets, caps the lifetime, pins the model, mints the provider's secret with
the backend key and answers with a token of its own (L{agw.decisions.CallTokens}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

from agw.config import Secret
from agw.decisions import Grant, KeyCheck, KeyRefused, resolve_alias
from agw.http import json_object
from agw.metering import HTTPExchange
from agw.routing import RouteContext, WebRTCEndpoint, client_host
from agw.calls._forms import BadForm, scrubbed_session, secret_seconds
from agw.calls._provider import Provider, ProviderAnswer, ProviderUnavailable

# A client secret request is a session configuration: instructions, tools... (OpenAI's own limits are far lower).
MAX_SECRET_REQUEST = 1024 * 1024


def realtime_model(session: dict[str, Any], pinned: str | None = None) -> str:
    """
    The model a session configuration asks for (C{pinned}: what a client
    secret allows, and the model when it names none); raises L{BadForm}
    when it names none or is not a Realtime session.
    """
    if session.get("type", "realtime") != "realtime":
        raise BadForm("session.type must be realtime: agw serves Realtime sessions (not transcription ones) over WebRTC")
    model = session.get("model", pinned)
    if not isinstance(model, str) or not model:
        raise BadForm("session.model is required: agw pins the model of every client secret and call", "model_required")
    return model


def upstream_session(session: dict[str, Any], model: str, context: RouteContext) -> dict[str, Any]:
    """C{session} as it goes to the provider: a Realtime session of C{model} (through C{modelAliases})."""
    return {**session, "type": "realtime", "model": resolve_alias(model, context.policies.model_aliases) or model}


class SecretsEndpoint:
    """The client secrets endpoint (mixed into L{agw.calls.WebRTCResource}, which provides the helpers)."""

    context: RouteContext
    provider: Provider
    presented: Any
    body: Any
    admit: Any
    answer_json: Any
    relay_refusal: Any

    async def mint_secret(self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint) -> int:
        context = self.context
        key, grant = context.identify(self.presented(request))
        if grant is not None:  # else a secret could be renewed forever without a key
            raise KeyRefused(403, "a client secret cannot mint another: use an API key", "client_secret_not_allowed")
        body = json_object(self.body(request, MAX_SECRET_REQUEST))
        session = body.get("session", {})
        if not isinstance(session, dict):
            raise BadForm("session must be a JSON object")
        model = realtime_model(session)
        KeyCheck.authorize(key, model)
        seconds = secret_seconds(body.get("expires_after"), context.policies.realtime_calls.max_secret_seconds)
        exchange.who = context.attribute(key)
        await self.admit(exchange.who.name, model)
        upstream = {
            **body, "expires_after": {"anchor": "created_at", "seconds": seconds},
            "session": upstream_session(session, model, context),
        }
        answer = await self.provider.post(request.path.decode("ascii"), json.dumps(upstream).encode(), "application/json", client_host(request))
        if answer.status != 200:
            return self.relay_refusal(request, answer)  # type: ignore[no-any-return]
        value, expires_at, minted_session = _minted(answer)
        expires_at = min(expires_at, context.reactor.seconds() + seconds)
        assert context.tokens is not None  # the resource serves only where the gateway keeps tokens
        token = context.tokens.mint(Grant(context.labels.values(), key.digest if key is not None else None, model, Secret(value), expires_at))
        return self.answer_json(  # type: ignore[no-any-return]
            request, 200, {"value": token, "expires_at": int(expires_at), "session": scrubbed_session(minted_session, value)},
        )


def _minted(answer: ProviderAnswer) -> tuple[str, float, Any]:
    """The provider's secret, its expiry and its session, from its answer; L{ProviderUnavailable} (502) if unreadable."""
    try:
        minted = json.loads(answer.body)
        value, expires_at = minted["value"], minted["expires_at"]
        if isinstance(value, str) and value and isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool):
            return value, float(expires_at), minted.get("session")
    except (ValueError, KeyError, TypeError):
        pass
    raise ProviderUnavailable(502, "the provider's client secret could not be read", "bad_upstream_answer")
