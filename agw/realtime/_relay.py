"""
The relay factory: joins client legs to upstream legs for one route.
It knows the backend, the credentials and the header policy; the legs know
only each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from agw._internals import DisplacingResource, use_reactor_timers
from agw.config import Policies
from agw.decisions import resolve_alias
from agw.decisions import KeyRefused
from agw.metering import RealtimeSession, peer_address
from agw.realtime._deflate import deflate_setting
from agw.realtime._guarding import SessionGuard
from agw.realtime._session_guards import session_guard
from agw.realtime._options import RelayOptions, SessionSlots
from agw.realtime._server import RealtimeServerFactory, RealtimeServerProtocol
from agw.realtime._upstream import UpstreamFactory, UpstreamProtocol, connect_upstream
from agw.routing import NoDeployment, ConnectionTracker, RouteContext, render_error, upstream_headers, webrtc_endpoint

# The client's WebSocket handshake headers: the upstream leg makes its own.
_HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "sec-websocket-accept", "origin", "cookie",
})
_KEY_PROTOCOL = "openai-insecure-api-key."
_ORG_PROTOCOL = "openai-organization."
_PROJECT_PROTOCOL = "openai-project."


def handshake_headers(
    request_headers: dict[str, str], protocols: Iterable[str], policies: Policies, client_address: str | None = None,
    key_header: tuple[str, str] = ("authorization", "Bearer "),
) -> dict[str, str]:
    """
    The headers of the upstream handshake (see L{upstream_headers}).

    Browser clients send credentials as subprotocols; they are never
    forwarded as such. Without a backend key they become the headers
    OpenAI expects, so the client still authenticates as itself. The
    backend key goes in C{key_header} (Azure's C{api-key}, say).
    """
    headers = dict(upstream_headers(request_headers.items(), policies, _HANDSHAKE_HEADERS, client_address, key_header))
    if policies.backend_key is None:
        for protocol in protocols:
            if protocol.startswith(_KEY_PROTOCOL):
                if policies.api_key is None:  # with an apiKey policy the key is agw's, not the provider's
                    name, prefix = key_header  # where this provider takes a key (Azure: api-key)
                    headers[name] = f"{prefix}{protocol[len(_KEY_PROTOCOL):]}"
            elif protocol.startswith(_ORG_PROTOCOL):
                headers["openai-organization"] = protocol[len(_ORG_PROTOCOL):]
            elif protocol.startswith(_PROJECT_PROTOCOL):
                headers["openai-project"] = protocol[len(_PROJECT_PROTOCOL):]
    return headers


def aliased_query(query: str, policies: Policies) -> str:
    """The handshake's query with C{?model=} resolved through C{modelAliases} (as it came if none applies)."""
    if not policies.model_aliases or "model=" not in query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    resolved = [(name, resolve_alias(value, policies.model_aliases) or value if name == "model" else value) for name, value in pairs]
    return query if resolved == pairs else urlencode(resolved, quote_via=quote)


class RealtimeRelay:
    """
    The Realtime relay of one route: a L{WebSocketResource} for the client
    side, and upstream legs opened per client handshake.
    """

    log = Logger()

    def __init__(
        self, context: RouteContext, options: RelayOptions = RelayOptions(), slots: SessionSlots | None = None,
    ) -> None:
        reactor = context.reactor
        self._context = context
        self._reactor = reactor
        self.slots = slots if slots is not None else SessionSlots(options.max_sessions)
        self.options = options
        self.sessions: set[RealtimeServerProtocol] = set()
        self.connections = ConnectionTracker()  # both legs of every session
        # Runs while sessions are open (see RealtimeSession.relayed).
        self._flushing = LoopingCall(self._flush_counters)
        self._flushing.clock = reactor  # type: ignore[assignment]
        self._factory = RealtimeServerFactory(self)
        deflate = deflate_setting(options.client_deflate)
        self._factory.setProtocolOptions(
            maxMessagePayloadSize=options.max_message_size,
            maxFramePayloadSize=options.max_message_size,
            openHandshakeTimeout=options.handshake_timeout + 5,
            closeHandshakeTimeout=options.close_timeout,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_timeout,
            # Reset by setProtocolOptions; browsers on file:// send "null".
            allowNullOrigin=True,
            # Tell a misbehaving peer why (1009, 1002, 1007) instead of
            # just dropping the TCP connection.
            failByDrop=False,
            # Each leg negotiates compression on its own: the client's messages
            # are read whole and decompressed, so usage is read either way.
            perMessageCompressionAccept=deflate.accept if deflate is not None else lambda offers: None,
            # Answer a peer's close with its own code and reason (RFC 6455
            # 5.5.1), not Autobahn's default bare 1000.
            echoCloseCodeReason=True,
        )
        use_reactor_timers(self._factory, reactor)  # type: ignore[arg-type]
        self.resource = RealtimeResource(DisplacingResource(self._factory), self._factory)

    def new_session(self, request: ConnectionRequest, peer: IAddress | None = None, query: str = "") -> RealtimeSession:
        """
        Accounting for a client shaking hands (from C{peer}; C{query}: its raw
        query), once its key (if the route has an C{apiKey} policy) may use the
        model it asks for; raises L{agw.routing.KeyRefused} otherwise.
        """
        model = request.params.get("model", [None])[0]
        context = self._context
        who = context.metrics.anonymous
        if context.keys is not None:
            key, _ = context.caller(context.presented_key(request.headers.get, query, tuple(request.protocols)), model)
            who = context.attribute(key)
        self._check_budgets(who.name, model)
        span = context.spans.start("realtime", self._reactor.seconds(), request.headers.get("traceparent"))
        return RealtimeSession(
            context.metrics, context.labels, model, self._reactor.seconds, context.access_log, who, context.governor,
            context.limits, request={"src.addr": peer_address(peer), "http.method": "GET", "http.path": request.path}, span=span,
        )

    def new_guard(self, session: RealtimeSession, request: ConnectionRequest) -> SessionGuard | None:
        """C{session}'s guard (C{promptGuard}, C{prompts}), if the route has any."""
        return session_guard(self._context, session, request.headers)

    def recheck(self, session: RealtimeSession) -> Deferred[None]:
        """
        Fires when C{session}'s consumer may go on: at once, or, near the end
        of a budget, after everyone's spend was read afresh (then it may
        fail with L{agw.routing.KeyRefused}: another process spent it).
        """
        governor = self._context.governor
        if governor is None:
            return succeed(None)
        consumer, model = session.who.name, session.request_model
        return governor.fresh(consumer).addCallback(lambda _: self._check_budgets(consumer, model))

    def _check_budgets(self, consumer: str | None, model: str | None) -> None:
        """Raise L{agw.routing.KeyRefused} if C{consumer}'s budgets let no session of C{model} start now."""
        context = self._context
        if context.governor is None:
            return
        denial = context.governor.blocking(consumer, context.metrics.prices(model), model)
        if denial is not None:
            raise KeyRefused(denial.status, denial.message, denial.code)

    def handshake_refused(self, status: int) -> None:
        """A client's handshake was answered C{status} instead of 101 (counted by status)."""
        context = self._context
        context.metrics.realtime.refusals.labels(*context.labels.values(), str(status)).inc()

    def open_upstream(
        self, request_uri: str, request: ConnectionRequest, session: RealtimeSession, request_peer: Any = None,
    ) -> Deferred[UpstreamProtocol]:
        """
        Open the upstream leg for a client handshake to C{request_uri} (raw
        path and query; the query goes as it came, less agw's credentials).
        Fires with the open upstream protocol, or fails (refusal, unreachable,
        timeout). C{request_peer} is the client's address (X-Forwarded-For).
        """
        split = urlsplit(request_uri)
        try:
            query = aliased_query(self._context.upstream_query(split.query), self._context.policies)
            url = self._context.target.url(split.path, query, websocket=True)
        except NoDeployment as e:
            return fail(e)
        peer = getattr(request_peer, "host", None)
        target = self._context.target
        headers = handshake_headers(request.headers, request.protocols, self._context.policies, peer, target.key_header)
        if session.traceparent is not None:  # the session's span is the provider's parent
            headers = {**headers, "traceparent": session.traceparent}
        factory = UpstreamFactory(url, headers=headers, useragent=None)
        opened = connect_upstream(factory, self._context.target, self._reactor, self.options, self.connections)

        def attach(upstream: UpstreamProtocol) -> UpstreamProtocol:
            upstream.usage_sink = session
            return upstream

        return opened.addCallback(attach)

    def opened(self, leg: RealtimeServerProtocol) -> None:
        self.sessions.add(leg)
        if not self._flushing.running:
            self._flushing.start(self.options.counter_flush_interval, now=False)

    def closed(self, leg: RealtimeServerProtocol) -> None:
        self.sessions.discard(leg)
        if not self.sessions and self._flushing.running:
            self._flushing.stop()

    def _flush_counters(self) -> None:
        for leg in self.sessions:
            if leg.session is not None:
                leg.session.flush()

    def end(self, session_id: str, code: int = 1000, reason: str = "closed by operator") -> bool:
        """
        Close session C{session_id} (its L{RealtimeSession.id}) the way
        L{close_all} closes every session: the client gets C{code} and
        C{reason}, responses still in flight are cancelled and their usage
        read (see L{UpstreamProtocol.drain}). C{False}: no such session here.
        """
        for leg in self.sessions:
            if leg.session is not None and leg.session.id == session_id:
                leg.close(code, reason)
                return True
        return False

    def close_all(self, code: int = 1001, reason: str = "gateway shutting down") -> Deferred[None]:
        """
        Close every open session; fires when every leg is gone (legs whose
        peers do not finish the close handshake in time, and upstream legs
        still waiting for usage after the cancel grace, are aborted).
        """
        for leg in list(self.sessions):
            leg.close(code, reason)
        # A session with responses in flight keeps its upstream leg open for
        # their usage (up to the cancel grace): not a straggler to abort.
        patience = max(self.options.close_timeout, self.options.cancel_grace) + 1
        return self.connections.when_empty(self._reactor, patience)



class RealtimeResource(Resource):
    """
    The realtime route type's resource: WebSocket upgrades go to the relay;
    OpenAI's WebRTC endpoints under the Realtime path (C{client_secrets},
    C{calls}: see L{agw.routing.webrtc_endpoint}) to C{webrtc}, when the
    gateway serves them; anything else gets a JSON 426 instead of
    Autobahn's HTML status page.
    """

    isLeaf = True
    webrtc: Resource | None = None

    def __init__(self, websocket: WebSocketResource, factory: WebSocketServerFactory | None = None) -> None:
        super().__init__()
        self._websocket = websocket
        self._factory = factory

    def session_factory(self, path: str, upgrade: bytes | None) -> WebSocketServerFactory | None:
        """
        The relay's protocol factory when a request to C{path} (normalised)
        whose C{Upgrade} header is C{upgrade} opens a session, as L{render}
        would give it one: agw's front door hands such a connection to it
        directly, without twisted.web. C{None}: L{render} decides.
        """
        if self._factory is None or webrtc_endpoint(path) is not None or (upgrade or b"").lower() != b"websocket":
            return None
        return self._factory

    def render(self, request: Request) -> bytes | int:
        upgrade = request.getHeader(b"upgrade") or b""
        if self.webrtc is not None and webrtc_endpoint(request.path.decode("ascii")) is not None:
            return self.webrtc.render(request)
        if upgrade.lower() != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            return render_error(
                request, 426, "this path is a Realtime WebSocket endpoint: send a WebSocket upgrade", "upgrade_required",
                "invalid_request_error",
            )
        return self._websocket.render(request)
