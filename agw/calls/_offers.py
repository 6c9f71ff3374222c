"""
C{POST …/realtime/calls} (a browser's SDP offer: raw C{application/sdp}
with an agw client secret, or the multipart C{sdp} + C{session} form with a
client key or a client secret) and C{POST …/realtime/calls/{id}/hangup}.
A call is answered only once its supervisor holds the sideband: no response
can start before agw meters it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.server import Request

from agw.config import ClientKey
from agw.decisions import Grant, KeyCheck, KeyRefused
from agw.http import Refused
from agw.metering import CLIENT, Attribution, HTTPExchange
from agw.realtime import RelayOptions
from agw.routing import RouteContext, WebRTCEndpoint, client_gone, client_host
from agw.calls._forms import BadForm, call_form, call_id_of, media_type, parse_call_form
from agw.calls._peers import Owner
from agw.calls._provider import Provider, ProviderUnavailable
from agw.calls._registry import CallRegistry
from agw.calls._secrets import realtime_model, upstream_session
from agw.calls._supervisor import SidebandUnavailable

# An SDP offer is a few kilobytes; with a session configuration, a few more.
MAX_OFFER = 1024 * 1024


def owner_of(context: RouteContext, key: ClientKey | None, who: Attribution) -> Owner:
    """Who a call belongs to: its route and consumer (the key's name, else the key itself; anonymous: nobody)."""
    return (context.labels.values(), who.name or (key.digest if key is not None else None))


class OffersEndpoint:
    """The calls endpoints (mixed into L{agw.calls.WebRTCResource}, which provides the helpers)."""

    context: RouteContext
    provider: Provider
    registry: CallRegistry
    options: RelayOptions
    supervise: Any
    presented: Any
    body: Any
    admit: Any
    answer_json: Any
    relay_refusal: Any

    async def open_call(self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint) -> int:
        context = self.context
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        offer = self.body(request, MAX_OFFER)
        key, grant = context.identify(self.presented(request))
        bearer: str | None = None
        if media_type(content_type) == "application/sdp":
            if grant is None:
                raise BadForm(
                    "a raw SDP offer needs a client secret from client_secrets; with an API key, send the multipart form "
                    "(sdp and session parts)", "client_secret_required",
                )
            model, body, upstream_type, bearer = grant.model, offer, "application/sdp", grant.provider_secret.value
        elif media_type(content_type) == "multipart/form-data":
            sdp, session = parse_call_form(offer, content_type)
            model = realtime_model(session or {}, grant.model if grant is not None else None)
            _pinned(grant, model)
            body, upstream_type = call_form(sdp, upstream_session(session or {}, model, context))
        else:
            raise Refused(415, "send application/sdp (with a client secret) or multipart/form-data", "unsupported_media_type")
        KeyCheck.authorize(key, model)
        who = exchange.who = context.attribute(key)
        if self.registry.full:
            raise Refused(503, "this gateway process supervises as many calls as it may; try again shortly", "too_many_calls", "server_error")
        await self.admit(who.name, model)
        answer = await self.provider.post(request.path.decode("ascii"), body, upstream_type, client_host(request), bearer)
        if answer.status != 201:
            return self.relay_refusal(request, answer)  # type: ignore[no-any-return]
        call_id = call_id_of(answer.header(b"location"))
        if call_id is None:  # nothing to supervise, nothing to hang up: the browser never gets the answer
            raise ProviderUnavailable(502, "the provider's answer named no call agw can supervise", "bad_upstream_answer")
        traceparent = request.getHeader(b"traceparent")
        supervisor = self.supervise(
            call_id, model, key, who, endpoint.realtime_path, "webrtc",
            {"src.addr": exchange.client, "http.method": "POST", "http.path": request.path.decode("ascii")},
            traceparent.decode("latin-1") if traceparent else None,
        )
        try:
            await supervisor.start()
        except SidebandUnavailable:
            raise ProviderUnavailable(
                502, "the call could not be supervised (its sideband did not open), so it was hung up", "sideband_unavailable",
            ) from None
        if client_gone(request):
            ensureDeferred(supervisor.stop(CLIENT))  # the browser will never have the answer
            return 499
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/sdp")
        # agw's own path for the call (not the provider's): the client hangs up through agw.
        request.setHeader(b"location", f"{request.path.decode('ascii')}/{call_id}".encode("ascii"))
        request.setHeader(b"access-control-expose-headers", b"Location")
        request.write(answer.body)
        request.finish()
        return 201

    async def hang_up(self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint) -> int:
        context = self.context
        key, _ = context.identify(self.presented(request))
        who = exchange.who = context.attribute(key)
        owner = owner_of(context, key, who)
        supervisor = self.registry.get(endpoint.call_id)
        if supervisor is not None and supervisor.owner == owner:
            found, status = True, await supervisor.stop(CLIENT)
        elif supervisor is None and endpoint.call_id is not None:  # another worker's, perhaps
            found, status = await self.registry.hang_up_elsewhere(endpoint.call_id, owner)
        else:
            found, status = False, None
        if not found:
            raise Refused(404, f"no call {endpoint.call_id!r} of yours is supervised by this gateway", "call_not_found")
        if status is None or not (200 <= status < 300 or status == 404):
            raise ProviderUnavailable(502, "the provider did not take the hang-up", "upstream_error")
        return self.answer_json(request, 200, {})  # type: ignore[no-any-return]


def _pinned(grant: Grant | None, model: str) -> None:
    """Raise L{KeyRefused} (403) if a client secret is used for another model than the one it pinned."""
    if grant is not None and model != grant.model:
        raise KeyRefused(403, f"this client secret is for model {grant.model!r}", "model_not_allowed")
