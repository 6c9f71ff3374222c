"""
C{POST …/realtime/webhook}: OpenAI's C{realtime.call.incoming} webhook for
a route with C{realtimeCalls.sip}. A phone call reaches the provider; agw
checks the delivery's signature (nothing else happens without it), takes
each call once (retries and replays do nothing twice, whichever worker
they reach), finds the line the call is for (its consumer, its session),
checks the consumer's key and budgets, and accepts the call with the
line's session — then supervises it from its sideband as a browser's — or
rejects it with a SIP status. The webhook is answered once the provider
took the accept or the reject (see docs/webrtc.md for why).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from agw.config import ClientKey, SIPCalls, SIPLine, signing_key
from agw.decisions import NEW, PENDING, KeyCheck, KeyRefused, WebhookRefused, incoming_call, line_for, verify_delivery
from agw.metering import HTTPExchange
from agw.routing import RouteContext, WebRTCEndpoint
from agw.calls._forms import CALL_ID
from agw.calls._provider import Provider, ProviderUnavailable
from agw.calls._registry import CallRegistry
from agw.calls._secrets import upstream_session

# OpenAI's events are a few kilobytes (an INVITE's headers).
MAX_EVENT = 256 * 1024

# The SIP status a refused call is rejected with: no line for it (Not Found), its key may not (Forbidden),
# its budget or the route's rate limit is spent for now (Busy Here), this process is full (Service Unavailable).
NO_LINE, FORBIDDEN, BUSY, UNAVAILABLE = 404, 403, 486, 503


def sip_status(refused: KeyRefused) -> int:
    """The SIP status a call refused by agw's checks (C{refused}) is rejected with."""
    return {429: BUSY, 503: UNAVAILABLE}.get(refused.status, FORBIDDEN)


class SIPEndpoint:
    """The SIP webhook (mixed into L{agw.calls.WebRTCResource}, which provides the helpers)."""

    log = Logger()
    context: RouteContext
    provider: Provider
    registry: CallRegistry
    supervise: Any
    body: Any
    admit: Any
    answer_json: Any

    async def incoming_call(self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint) -> int:
        sip = self.context.policies.realtime_calls.sip
        if sip is None:
            raise WebhookRefused(404, "this route takes no SIP calls (realtimeCalls.sip)", "not_found")
        body = self.body(request, MAX_EVENT)
        delivery = verify_delivery(
            signing_key(sip.secret.value), lambda name: _header(request, name), body, self.context.reactor.seconds(), sip.tolerance,
        )
        seen = self.registry.deliveries.begin(delivery, sip.tolerance, self.context.reactor.seconds())
        if seen != NEW:
            # Acted on already (a retry whose answer was lost, or a replay): nothing twice. One still being
            # acted on is answered 409, so that the provider retries it if that first one fails.
            return self.answer_json(request, 409 if seen == PENDING else 200, {"status": "duplicate"})  # type: ignore[no-any-return]
        try:
            status, outcome = await self._answer_call(request, exchange, endpoint, sip, body)
        except Exception:
            self.registry.deliveries.forget(delivery)  # the provider's retry may act
            raise
        self.registry.deliveries.finish(delivery)
        return self.answer_json(request, status, outcome)  # type: ignore[no-any-return]

    async def _answer_call(
        self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint, sip: SIPCalls, body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        try:
            event = json.loads(body)
        except ValueError:
            raise WebhookRefused(400, "the event is not JSON", "invalid_event") from None
        call = incoming_call(event)
        if call is None:
            return 200, {"status": "ignored"}  # another event of the project: not agw's to act on
        if not CALL_ID.fullmatch(call.call_id):
            raise WebhookRefused(400, "data.call_id is not a call id agw can use", "invalid_event")
        if not await self.registry.claim(call.call_id):
            return 200, {"status": "duplicate"}  # another delivery of this call, here or on another worker
        try:
            return await self._take(request, exchange, endpoint, call.call_id, line_for(sip.lines, call))
        except Exception:
            self.registry.release(call.call_id)
            raise

    async def _take(
        self, request: Request, exchange: HTTPExchange, endpoint: WebRTCEndpoint, call_id: str, line: SIPLine | None,
    ) -> tuple[int, dict[str, Any]]:
        context = self.context
        if line is None:
            return await self._reject(endpoint, call_id, NO_LINE, "no line takes it")
        key = _consumer_key(context, line)
        exchange.who = who = context.attribute(key)
        model = line.model
        try:
            if line.consumer is not None and key is None:  # the key went in a reload
                raise KeyRefused(403, f"no key of consumer {line.consumer!r}", "invalid_api_key")
            KeyCheck.authorize(key, model)
            if self.registry.full:
                raise KeyRefused(503, "this gateway process supervises as many calls as it may", "too_many_calls")
            await self.admit(who.name, model)
        except KeyRefused as refused:
            return await self._reject(endpoint, call_id, sip_status(refused), refused.message, who.consumer)
        session = upstream_session(line.session_config, model, context)
        answer = await self.provider.post(f"{endpoint.realtime_path}/calls/{call_id}/accept", json.dumps(session).encode(), "application/json")
        if answer.status >= 500:
            raise ProviderUnavailable(502, f"the provider answered the accept {answer.status}", "upstream_error")
        if not 200 <= answer.status < 300:
            # The call is over (the caller hung up) or cannot be accepted: a retry would fare no better.
            self.log.warn("call {call}: the provider refused the accept ({status})", call=call_id, status=answer.status)
            self.registry.release(call_id)
            return 200, {"status": "not_accepted", "provider_status": answer.status}
        supervisor = self.supervise(
            call_id, model, key, who, endpoint.realtime_path, "sip", {"http.method": "POST", "http.path": request.path.decode("ascii")},
        )
        # The call is through: supervision starts now, the webhook is not kept waiting for the sideband (a
        # sideband that cannot be opened hangs the call up).
        supervisor.start().addErrback(lambda _: None)
        self.log.info("call {call}: accepted for {consumer}", call=call_id, consumer=who.consumer)
        return 200, {"status": "accepted"}

    async def _reject(self, endpoint: WebRTCEndpoint, call_id: str, status: int, why: str, consumer: str = "") -> tuple[int, dict[str, Any]]:
        answer = await self.provider.post(
            f"{endpoint.realtime_path}/calls/{call_id}/reject", json.dumps({"status_code": status}).encode(), "application/json",
        )
        if answer.status >= 500:
            raise ProviderUnavailable(502, f"the provider answered the reject {answer.status}", "upstream_error")
        self.log.info("call {call}: rejected {status} ({why}) {consumer}", call=call_id, status=status, why=why, consumer=consumer)
        self.registry.release(call_id)
        return 200, {"status": "rejected", "sip_status": status}


def _consumer_key(context: RouteContext, line: SIPLine) -> ClientKey | None:
    """The client key of the consumer a line bills (the first of that name), if any."""
    api_key = context.policies.api_key
    if line.consumer is None or api_key is None:
        return None
    return next((key for key in api_key.keys if key.name == line.consumer), None)


def _header(request: Request, name: str) -> str | None:
    value = request.getHeader(name.encode("latin-1"))
    return value.decode("latin-1") if value is not None else None

