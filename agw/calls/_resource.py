"""
L{WebRTCResource}: OpenAI's WebRTC endpoints on a Realtime route
(C{POST …/realtime/client_secrets}, C{…/realtime/calls},
C{…/realtime/calls/{id}/hangup}) and agw's SIP webhook
(C{…/realtime/webhook}), reached through the route's Realtime resource (see
L{agw.routing.route_type_for}). What each endpoint does is in
L{agw.calls._secrets}, L{agw.calls._offers} and L{agw.calls._sip}; here:
dispatch, reading bodies, answering errors, recording each request, and
starting a call's supervision (L{WebRTCResource.supervise}).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from agw.config import ClientKey
from agw.decisions import KeyRefused, WebhookRefused
from agw.http import Refused, UpstreamClient
from agw.metering import Attribution, CallRecord, HTTPExchange, RealtimeSession
from agw.realtime import RelayOptions, open_sideband
from agw.routing import RouteContext, WebRTCEndpoint, client_gone, render_error, webrtc_endpoint
from agw.calls._forms import BadForm, without_provider_secrets
from agw.calls._offers import OffersEndpoint
from agw.calls._peers import CallInfo
from agw.calls._provider import Provider, ProviderAnswer, ProviderUnavailable
from agw.calls._registry import CallRegistry
from agw.calls._secrets import SecretsEndpoint
from agw.calls._sip import SIPEndpoint
from agw.calls._supervisor import CallSupervisor

# A provider's refusal passed on to the client: its JSON error, up to this size.
MAX_RELAYED_ERROR = 64 * 1024

Handler = Callable[[Request, HTTPExchange, WebRTCEndpoint], Awaitable[int]]


class WebRTCResource(SecretsEndpoint, OffersEndpoint, SIPEndpoint, Resource):
    """The WebRTC endpoints and the SIP webhook of one Realtime route (C{context}); calls are supervised in C{registry}."""

    isLeaf = True
    log = Logger()

    def __init__(self, context: RouteContext, client: UpstreamClient, registry: CallRegistry, options: RelayOptions) -> None:
        super().__init__()
        self.context, self.registry, self.options = context, registry, options
        self.provider = Provider(client, context, options.handshake_timeout)

    def render(self, request: Request) -> bytes | int:
        endpoint = webrtc_endpoint(request.path.decode("ascii"))
        exchange = HTTPExchange(request.path, self.context.reactor.seconds(), None, peer=request.getClientAddress())
        why = self._unavailable(request)
        if endpoint is None or why is not None:
            status, message, code = why or (404, "not a WebRTC endpoint", "not_found")
            body = render_error(request, status, message, code, "invalid_request_error")
            self._record(request, exchange, status)
            return body
        handler: Handler | None = {
            "client_secrets": self.mint_secret, "calls": self.open_call, "hangup": self.hang_up, "webhook": self.incoming_call,
        }.get(endpoint.name)
        if handler is None:  # accept, reject, refer: agw answers phone calls itself (a client must not)
            body = render_error(request, 403, "agw accepts and rejects SIP calls itself (its webhook)", "not_allowed", "invalid_request_error")
            self._record(request, exchange, 403)
            return body
        ensureDeferred(self._serve(handler, request, exchange, endpoint))
        return NOT_DONE_YET

    def _unavailable(self, request: Request) -> tuple[int, str, str] | None:
        """Why this route cannot serve the request at all, if it cannot."""
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return 405, "use POST", "method_not_allowed"
        if self.context.target.azure is not None:
            return 501, "WebRTC calls through agw are served on OpenAI backends only (Azure's: not yet)", "not_implemented"
        if self.context.policies.backend_key is None or self.context.tokens is None:
            return 501, "this route has no backendAuth key: agw mints client secrets and opens calls with it", "not_implemented"
        return None

    async def _serve(self, handler: Handler, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint) -> None:
        try:
            status = await handler(request, exchange, endpoint)
        except (KeyRefused, Refused) as refused:
            status = self.error(request, refused.status, refused.message, refused.code, refused.error_type)
        except BadForm as bad:
            status = self.error(request, 400, bad.message, bad.code)
        except WebhookRefused as refused:
            status = self.error(request, refused.status, refused.message, refused.code)
        except ProviderUnavailable as unavailable:
            status = self.error(request, unavailable.status, unavailable.message, unavailable.code, "server_error")
        except Exception:
            self.log.failure("WebRTC endpoint {path} failed", Failure(), path=request.path)
            status = self.error(request, 502, "gateway error", "gateway_error", "server_error")
        self._record(request, exchange, status)

    def _record(self, request: Request, exchange: HTTPExchange, status: int) -> None:
        context = self.context
        exchange.record(context.metrics, context.labels, context.access_log, request.method, status, context.reactor.seconds())

    # Supervision

    def supervise(
        self, call_id: str, model: str, key: ClientKey | None, who: Attribution, realtime_path: str, transport: str,
        request: dict[str, Any], traceparent: str | None = None,
    ) -> CallSupervisor:
        """
        A supervisor for call C{call_id} of C{who} (C{key}: its client
        key), added to the registry (the caller starts it); C{request}: the
        fields of its session's records.
        """
        context = self.context
        reactor = context.reactor
        session = RealtimeSession(
            context.metrics, context.labels, model, reactor.seconds, context.access_log, who, context.governor, context.limits,
            request={**request, "agw.call_id": call_id}, span=context.spans.start("realtime", reactor.seconds(), traceparent),
            transport=transport,
        )
        record = CallRecord(context.metrics.calls, context.labels, who, call_id, reactor.seconds, context.access_log, transport)
        hangup_path = f"{realtime_path}/calls/{call_id}/hangup"

        async def hang_up() -> int:
            return (await self.provider.post(hangup_path, b"", "")).status

        owner_name = who.name or (key.digest if key is not None else None)
        info = CallInfo(call_id, context.labels.values(), realtime_path, model, key.digest if key is not None else None, owner_name, transport)
        supervisor = CallSupervisor(
            call_id, info.owner, session, record,
            lambda: open_sideband(context, self.options, self.registry.connections, realtime_path, call_id, session),
            hang_up, context.policies.realtime_calls, self.options.cancel_grace, reactor,
        )
        self.registry.add(supervisor, info)
        return supervisor

    def adopt(self, info: CallInfo) -> None:
        """
        Supervise a call another process made and can no longer follow (it
        died): a new sideband; the call counts as not metered whole (what
        happened meanwhile was not seen). One that cannot be followed is
        hung up (fail closed), one already over is let go.
        """
        context = self.context
        key = context.keys.known(info.key_digest) if context.keys is not None and info.key_digest is not None else None
        supervisor = self.supervise(
            info.call_id, info.model, key, context.attribute(key), info.realtime_path, info.transport, {"agw.call.adopted": True},
        )
        supervisor.record.lost()
        self.log.info("call {call}: supervised here now (its process ended)", call=info.call_id)
        supervisor.start().addErrback(lambda _: None)  # SidebandUnavailable: hung up already, or over

    # What the endpoints share

    def presented(self, request: Request) -> str | None:
        """The client key or client secret the request presents, where the route's C{apiKey.location} says."""
        query = request.uri.decode("latin-1").partition("?")[2]
        return self.context.presented_key(lambda name: _header(request, name), query)

    def body(self, request: Request, limit: int) -> bytes:
        """The request body, if it is no larger than C{limit} (else L{Refused}, 413)."""
        content = request.content
        content.seek(0, 2)
        if content.tell() > limit:
            raise Refused.too_large(limit)
        content.seek(0)
        return content.read()  # type: ignore[no-any-return]

    def error(self, request: Request, status: int, message: str, code: str, error_type: str = "invalid_request_error") -> int:
        """Answer an OpenAI-shaped error (unless the client left: then 499); returns the status recorded."""
        if client_gone(request):
            return 499
        request.write(render_error(request, status, message, code, error_type))
        request.finish()
        return status

    def answer_json(self, request: Request, status: int, body: Any) -> int:
        if client_gone(request):
            return 499
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(body).encode())
        request.finish()
        return status

    def relay_refusal(self, request: Request, answer: ProviderAnswer) -> int:
        """
        The provider refused: its status, and its JSON error if it sent one
        (nothing else of its answer; a client secret it names, even masked,
        is not passed on).
        """
        try:
            error = json.loads(answer.body) if len(answer.body) <= MAX_RELAYED_ERROR else None
        except ValueError:
            error = None
        if isinstance(error, dict) and isinstance(error.get("error"), dict):
            return self.answer_json(request, answer.status, {"error": without_provider_secrets(error["error"])})
        return self.error(request, answer.status, f"the provider answered {answer.status}", "upstream_error", "server_error")

    async def admit(self, consumer: str | None, model: str) -> None:
        """
        Raise L{KeyRefused} if C{consumer}'s budgets let nothing of C{model}
        start now (decided on fresh spend near a budget's end), or the
        route's C{localRateLimit} has no request left (each request here
        spends one, as every HTTP request does).
        """
        context = self.context
        if context.governor is not None:
            await context.governor.fresh(consumer)
            denial = context.governor.blocking(consumer, context.metrics.prices(model), model)
            if denial is not None:
                raise KeyRefused(denial.status, denial.message, denial.code)
        empty = context.limits.admit() if context.limits is not None else None
        if empty is not None:
            raise KeyRefused(429, f"rate limit reached for {empty.kind} on this route", "rate_limit_exceeded")


def _header(request: Request, name: str) -> str | None:
    value = request.getHeader(name.encode("latin-1"))
    return value.decode("latin-1") if value is not None else None
