"""
HTTP forwarding: one resource per route type of a route. Requests go
upstream through the gateway's L{UpstreamClient}; responses come back as
they arrive, with usage read on the way.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from agw.config import RouteType
from agw.decisions import KeyCheck, KeyRefused
from agw.http._admission import admit
from agw.http._arriving import BodyBroken
from agw.http._body import BodyRelay, answer_head, kept_for_usage, when_client_leaves
from agw.http._client import UpstreamClient, tls_failure
from agw.http._prepare import GuardRejected, write_rejection
from agw.http._request_bodies import RequestBodies, client_headers
from agw.http._deadline import AnswerDeadlines
from agw.http._request_body import Refused
from agw.http._response_guard import answer_guard
from agw.metering import (
    HTTPExchange,
    JSONWatcher,
    SSEWatcher,
    UsageChunkRemover,
    UsageExtractor,
    UsageReport,
    Watcher,
    chat_completion_usage,
    embeddings_usage,
    responses_usage,
)
from agw.routing import (
    ConnectionTracker,
    NoDeployment,
    RouteContext,
    client_gone,
    client_host,
    guard_headers,
    render_error,
    RequestHeaderPolicy,
    byte_pairs,
)

# Route types whose bodies the gateway reads: extractor and operation name.
_PARSED: dict[RouteType, tuple[UsageExtractor, str]] = {
    RouteType.COMPLETIONS: (chat_completion_usage, "chat"),
    RouteType.RESPONSES: (responses_usage, "chat"),
    RouteType.EMBEDDINGS: (embeddings_usage, "embeddings"),
}


def _header(request: Request, name: bytes) -> str | None:
    return value.decode("latin-1") if (value := request.getHeader(name)) is not None else None


class HTTPForwarder(Resource):
    """Forwards one route type of one route (C{passthrough} and C{models}: bodies unread)."""

    isLeaf = True
    log = Logger()

    def __init__(
        self, route_type: RouteType, client: UpstreamClient, context: RouteContext,
        in_flight: ConnectionTracker | None = None,
    ) -> None:
        super().__init__()
        self._type = route_type
        self._parsed = _PARSED.get(route_type)
        self._client = client
        self._context = context
        self._reactor = context.reactor
        self._deadlines = AnswerDeadlines(context.reactor, client.options.response_timeout)
        self._in_flight = in_flight if in_flight is not None else ConnectionTracker()
        # A request guard calls out (webhook, moderation): it may be sent the client's headers.
        self._calls_out = any(guard.regex is None for guard in context.policies.prompt_guard.request)
        self._answers_call_out = any(guard.webhook is not None for guard in context.policies.prompt_guard.response)
        # The upstream client negotiates (and decodes) compression itself; agw answered the
        # client's Expect: 100-continue, and the whole body goes upstream.
        self._header_policy = RequestHeaderPolicy(
            context.policies, also_drop=("accept-encoding", "expect"), key_header=context.target.key_header,
        )
        self._host = (b"host", context.target.authority.encode("ascii"))
        self._bodies = RequestBodies(route_type, self._parsed is not None, client.options, context, self._calls_out)

    def body_limit(self, method: bytes) -> int:
        """The largest body this route type takes with C{method} (a larger C{Content-Length}: 413 before any upload)."""
        return self._bodies.limit(method)

    def render(self, request: Request) -> int:
        self._in_flight.add(request)
        exchange = self._exchange(request)
        ensureDeferred(self._forward(request, exchange)).addBoth(self._done, request, exchange)
        return NOT_DONE_YET

    def _done(self, result: object, request: Request, exchange: HTTPExchange) -> None:
        if isinstance(result, Failure):
            self._unexpected(result, request, exchange)
        exchange.reservation.release()  # settled by record() when it ran; whatever happened, it holds nothing now
        self._in_flight.discard(request)

    def _unexpected(self, failure: Failure, request: Request, exchange: HTTPExchange) -> None:
        self.log.failure("forwarding {uri} failed", failure, uri=request.path)
        if request.finished:
            return  # answered (and recorded) before it failed
        if not request.startedWriting:
            request.write(render_error(request, 502, "gateway error", "gateway_error"))
        if not client_gone(request):
            request.finish()
        self._record(request.method, 502, exchange)

    def _unread(self, method: bytes) -> bool:
        """Whether the body goes unread: no model to check, no tokens to count (listing models spends nothing)."""
        return self._parsed is None and not (self._type is RouteType.MODELS and method in (b"GET", b"HEAD"))

    def refusal_before_body(self, method: bytes, query: str, header: Callable[[str], str | None]) -> KeyRefused | None:
        """What the request's client key would be refused with, if anything: asked before a client is told to upload."""
        keys = self._context.keys
        try:
            key = keys.authenticate(self._context.presented_key(header, query)) if keys is not None else None
            if self._unread(method):
                KeyCheck.authorize_unread(key)
        except KeyRefused as refused:
            return refused
        return None

    async def _forward(self, request: Request, exchange: HTTPExchange) -> None:
        method = request.method
        path, _, query = request.uri.decode("latin-1").partition("?")
        keys = self._context.keys
        try:
            presented = self._context.presented_key(lambda name: _header(request, name.encode("latin-1")), query)
            key = keys.authenticate(presented) if keys is not None else None
            exchange.who = self._context.attribute(key) if keys is not None else None
            if self._unread(method):
                KeyCheck.authorize_unread(key)
            body = await self._bodies.read(request, exchange)
            if self._parsed is not None:
                # Only where agw reads the body does it know the model (passthrough: not checked).
                KeyCheck.authorize(key, exchange.request_model)
            if self._context.governor is not None and exchange.who is not None:
                # Near the end of a budget, decided on a fresh read of everyone's spend.
                await self._context.governor.fresh(exchange.who.name)
            admit(request, exchange, self._context, reads_body=self._parsed is not None)
        except Refused as refused:
            return self._answer(request, exchange, refused.status, refused.message, refused.code, refused.error_type)
        except KeyRefused as refused:
            return self._answer(request, exchange, refused.status, refused.message, refused.code, refused.error_type)
        except GuardRejected as rejected:
            if rejected.unavailable:
                message = "a guardrail service did not answer; the request was not sent"
                return self._answer(request, exchange, 503, message, "guardrail_unavailable", "server_error")
            if not client_gone(request):
                write_rejection(request, rejected.rejection)
                self._record(method, rejected.rejection.status, exchange)
            return None
        except CancelledError:
            if not client_gone(request):
                raise
            return self._record(method, 499, exchange)  # the client left while a guard backend was asked
        except BodyBroken:
            return self._record(method, 499, exchange)  # the client left while its body arrived

        try:
            url = self._context.target.url(path, self._context.upstream_query(query), model=exchange.request_model)
        except NoDeployment as e:
            return self._answer(request, exchange, 400, str(e), "model_required", "invalid_request_error")
        deadline = self._deadlines.start()  # from when the body is sent
        pending = self._client.request(
            method, url, self._headers(request, exchange.span.traceparent), deadline.sending(body), self._context.target,
        )
        deadline.watch(pending)
        # The client going away does not take the upstream request with it at once: the provider bills
        # what it answers, so the answer is awaited (up to the usage grace) and read for its usage.
        when_client_leaves(request, lambda: kept_for_usage(pending, self._reactor, self._client.options.usage_grace))
        try:
            response: IResponse = await pending
        except (
            CancelledError, ConnectError, DNSLookupError, ConnectingCancelledError, ResponseFailed,
            RequestTransmissionFailed, RequestGenerationFailed, ResponseNeverReceived,
        ) as e:
            if deadline.timed_out:
                return self._answer(request, exchange, 504, "upstream did not answer in time", "upstream_timeout")
            if client_gone(request):
                return self._record(method, 499, exchange)
            if tls_failure(e):
                self.log.warn("TLS to the upstream of {path} failed: {reason}", path=exchange.path, reason=tls_failure(e))
                return self._answer(request, exchange, 502, "upstream TLS verification failed", "upstream_tls_error")
            if isinstance(e, ResponseFailed):
                return self._answer(request, exchange, 502, "upstream closed the connection", "upstream_closed")
            return self._answer(request, exchange, 502, "upstream unreachable", "upstream_unreachable")
        finally:
            deadline.stop()

        watcher = self._watcher(response, exchange.report)
        exchange.streamed = isinstance(watcher, SSEWatcher)
        remover = UsageChunkRemover() if exchange.streamed and exchange.hide_stream_usage else None
        guard = answer_guard(
            self._type, self._context.policies.prompt_guard, request, response, exchange, self._client.options.max_json_body,
            self._context.guard_calls,  # type: ignore[arg-type]
            guard_headers(client_headers(request), self._context.policies) if self._answers_call_out else None,
        )
        ends_at_close = answer_head(request, response, same_length=remover is None and guard is None)

        def first_byte() -> None:
            exchange.first_byte_at = self._reactor.seconds()

        relay = BodyRelay(
            request, watcher, first_byte, remover, self._reactor, self._client.options.body_idle_timeout, guard,
            self._client.options.usage_grace,
        )
        response.deliverBody(relay)
        reason = relay.reason if relay.reason is not None else await relay.done  # an answer that came whole: ended already
        exchange.body_timed_out = relay.timed_out
        if not request.finished and not client_gone(request):
            if not isinstance(reason, ResponseDone) and not (ends_at_close and isinstance(reason, PotentialDataLoss)):
                request.loseConnection()  # the body broke off: don't pretend it is complete
            else:
                request.finish()
        if client_gone(request):  # it left: 499, though what the provider billed still counts
            exchange.upstream_status = response.code
            return self._record(method, 499, exchange)
        # A guard may have answered in the provider's place (a rejection): the client's status is recorded.
        self._record(method, response.code if guard is None else request.code, exchange)

    def _exchange(self, request: Request) -> HTTPExchange:
        operation = self._parsed[1] if self._parsed else None
        now, method = self._reactor.seconds(), request.method.decode("ascii", "replace")
        span = self._context.spans.start(method, now, _header(request, b"traceparent"))
        return HTTPExchange(request.path, now, operation, peer=request.getClientAddress(), span=span)

    def _headers(self, request: Request, traceparent: str | None = None) -> list[tuple[bytes, bytes]]:
        host = client_host(request)
        headers = self._header_policy.apply(byte_pairs(request.requestHeaders), host.encode("latin-1") if host else None)
        replaced = (b"host", b"traceparent") if traceparent is not None else (b"host",)
        result = [pair for pair in headers if pair[0] not in replaced]
        result.append(self._host)
        if traceparent is not None:  # agw's span is the provider's parent
            result.append((b"traceparent", traceparent.encode("ascii")))
        return result

    def _watcher(self, response: IResponse, report: UsageReport) -> Watcher | None:
        if self._parsed is None or not 200 <= response.code < 300:
            return None
        extract = self._parsed[0]
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if content_type.startswith(b"text/event-stream"):
            return SSEWatcher(extract, report)
        return JSONWatcher(extract, report, self._client.options.max_json_body)

    def _answer(
        self, request: Request, exchange: HTTPExchange, status: int, message: str, code: str, error_type: str = "gateway_error",
    ) -> None:
        """agw's own answer in the upstream's place, recorded as the request's own (its start, its consumer, its span)."""
        if client_gone(request):
            return self._record(request.method, 499, exchange)
        request.write(render_error(request, status, message, code, error_type))
        request.finish()
        self._record(request.method, status, exchange)

    def _record(self, method: bytes, status: int, exchange: HTTPExchange) -> None:
        context = self._context
        if context.limits is not None and exchange.usage is not None:
            context.limits.charge(exchange.usage.input + exchange.usage.output)
        exchange.record(context.metrics, context.labels, context.access_log, method, status, self._reactor.seconds())
