"""
The gateway: a config turned into one resource per bind, a metrics registry
and a service. This is agw's embedding API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from agw.calls import CallInfo, CallRegistry, WebRTCResource
from agw.config import Bind, GatewayConfig, Listener, Route, RouteType, load_config
from agw.decisions import CallTokens, KeyCheck, RouteLimits
from agw.http import GuardCalls, HTTPForwarder, HTTPOptions, UpstreamClient
from agw.metering import (
    NO_ACCESS_LOG,
    AccessLog,
    Attributor,
    GatewayMetrics,
    Governor,
    RouteLabels,
    ReserveOptions,
    catalog_for,
)
from agw.realtime import RealtimeRelay, RelayOptions, SessionSlots
from agw.routing import BackendTarget, BindResource, ConnectionTracker, ErrorResource, RouteContext, RoutedRoute
from agw.serve._reloaded import Reloaded, bind_changes, budget_setup, files_named, restart_only_changes
from agw.serve._route_notes import warn_unguarded
from agw.serve._setup import client_keys, governor_for, spans_for


class CurrentBind(Resource):
    """
    The stable root of one bind: it serves with whichever routes the
    gateway's config has now, so a reload changes what new requests get
    while an embedder's tree and a listening site keep this one object.
    """

    isLeaf = True

    def __init__(self, routes: BindResource) -> None:
        super().__init__()
        self.routes = routes

    def render(self, request: Request) -> bytes | int:
        return self.routes.render(request)

    def refusal_before_body(self, method: bytes, target: bytes, host: str, header: Callable[[str], str | None]) -> Any:
        """See L{BindResource.refusal_before_body}."""
        return self.routes.refusal_before_body(method, target, host, header)


class Gateway:
    """
    agw built from a L{GatewayConfig}.

    Embed it in an existing twisted.web site with L{resource}, or run all of
    it (binds, stats, readiness, the admin page) with L{service}::

        gateway = Gateway.from_file("config.yaml")
        root.putChild(b"ai", gateway.resource())      # or:
        gateway.service().setServiceParent(application)
    """

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: IReactorTCP | None = None,
        metrics: GatewayMetrics | None = None,
        relay_options: RelayOptions = RelayOptions(),
        http_options: HTTPOptions = HTTPOptions(),
        access_log: AccessLog = NO_ACCESS_LOG,
        rate_limit_share: float = 1.0,
        reserve: ReserveOptions = ReserveOptions(),
        charge_spool: str = "",
        token_key: bytes | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.config = config
        self.reactor = reactor
        # This process's part of each localRateLimit bucket (1/N with N workers).
        self.rate_limit_share = rate_limit_share
        self.attributor = Attributor(config.metric_fields, config.log_fields)
        self.metrics = metrics if metrics is not None else GatewayMetrics(
            catalog=catalog_for(config.model_catalog), extra_labels=self.attributor.label_names,
        )
        if self.metrics.extra_labels != self.attributor.label_names:
            raise ValueError(
                f"GatewayMetrics(extra_labels={self.metrics.extra_labels!r}) does not match "
                f"config.metrics.fields.add {self.attributor.label_names!r}"
            )
        self.relay_options = relay_options
        self.access_log = access_log
        self.relays: list[RealtimeRelay] = []
        self.http_options = http_options
        self.http_client = UpstreamClient(reactor, http_options)
        # Webhook and openAIModeration guards' calls (its own pools: never the provider's connections).
        self.guard_calls = GuardCalls(reactor, http_options.connect_timeout)
        self.in_flight = ConnectionTracker()  # HTTP requests being forwarded
        # agw's client secrets (sealed with token_key: a worker pool's, shared by its workers; else this gateway's own)
        # and the calls this process supervises.
        self.tokens, self.calls = CallTokens(reactor.seconds, token_key), CallRegistry()
        self.calls.adopter = self.adopt_call
        self._realtime_routes: dict[tuple[str, ...], Any] = {}  # route labels -> its resource_for (adopting calls)
        self.reserve = reserve  # what one response is assumed to cost before one is seen (budgets)
        self.charge_spool = charge_spool  # where charges the ledger could not take at stop are kept
        self.governor = governor_for(config, reactor, self.metrics, reserve=reserve, charge_spool=charge_spool)
        self.spans = spans_for(config)
        # Governors of databases a reload replaced: sessions opened before still charge them until they stop.
        self.retired_governors: list[Governor] = []
        self._slots: dict[int, SessionSlots] = {}  # one session count per bind, across reloads
        self._trust_roots: Mapping[str, bytes] = {}  # a reload's, read before it applies anything
        self.route_limits: dict[RouteLabels, RouteLimits] = {}  # each route's localRateLimit buckets in force
        self._resources = {bind.port: CurrentBind(self._bind_resource(bind)) for bind in config.binds}

    @classmethod
    def from_file(cls, filename: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Gateway:
        """Build from a config file; raises L{agw.config.ConfigError}."""
        return cls(load_config(filename, environ), **kwargs)

    def resource(self, port: int | None = None) -> IResource:
        """The resource serving bind C{port} (the first bind by default)."""
        return self._resources[self.config.binds[0].port if port is None else port]

    def service(self, interface: str = "::", drain_period: float = 5.0) -> Any:
        """
        A L{agw.serve.GatewayService} listening on every bind (on
        C{interface}), stats, readiness and the admin page; stopping it drains for up to
        C{drain_period} seconds (see L{drain}).
        """
        from agw.serve._service import GatewayService

        return GatewayService(self, interface, drain_period)

    @inlineCallbacks
    def drain(self, period: float) -> Any:
        """
        Stop gracefully (call after the listeners stopped): give Realtime
        sessions and in-flight HTTP requests up to C{period} seconds to end
        by themselves, then close the sessions with 1001 and drop what is
        left.
        """
        waits = [relay.connections.wait_empty(self.reactor, period) for relay in self.relays]  # type: ignore[arg-type]
        waits.append(self.in_flight.wait_empty(self.reactor, period))  # type: ignore[arg-type]
        yield DeferredList(waits)
        yield self.close_sessions()
        self.in_flight.abort_all()

    def close_sessions(self, code: int = 1001, reason: str = "gateway shutting down") -> Deferred[Any]:
        """
        Close every open Realtime session and the idle upstream HTTP
        connections; fires when all of them are gone.
        """
        closing = [relay.close_all(code, reason) for relay in self.relays]
        calls = self.calls.stop_all(self.reactor, max(self.relay_options.close_timeout, self.relay_options.cancel_grace) + 1)
        return DeferredList([*closing, calls.addCallback(lambda _: self.http_client.close()), self.guard_calls.close()])

    def reload(self, config: GatewayConfig) -> Reloaded:
        """
        Serve C{config} from now on: new requests and sessions get its
        routes, backends, keys, limits and prices; open Realtime sessions
        and requests in flight finish on the config they started with.
        Raises L{ReloadRefused} (and changes nothing) for what needs a restart.
        """
        old = self.config
        restart_only = restart_only_changes(old, config)
        catalog, self._trust_roots = files_named(config)  # nothing is applied if one cannot be read
        attributor = Attributor(config.metric_fields, config.log_fields)
        governor = None
        same_database = self.governor is not None and config.database_url == old.database_url
        if budget_setup(config) != budget_setup(old):
            keys = client_keys(config)
            if same_database and any(key.budgets for key in keys):
                self.governor.configure(keys)  # type: ignore[union-attr]  # spend and holds carry on
            else:
                governor = governor_for(config, self.reactor, self.metrics, reserve=self.reserve, charge_spool=self.charge_spool)
                if self.governor is not None:
                    self.governor.retire()
                    self.retired_governors.append(self.governor)
                self.governor = governor
        self.config, self.attributor = config, attributor
        # Prices are those in force when a response ends (an open session's next response is priced anew).
        self.metrics.catalog = catalog
        # self.relays keeps the relays of earlier configs: drain and stop close their sessions too.
        added, removed = bind_changes(old, config)
        self.route_limits = {}  # rebuilt below: the buckets new requests get
        self._realtime_routes.clear()  # a call adopted from now on is followed as the new config says
        for bind in config.binds:
            routes = self._bind_resource(bind)
            if bind.port in self._resources:
                self._resources[bind.port].routes = routes
            else:
                self._resources[bind.port] = CurrentBind(routes)
        for port in removed:  # a connection opened before (keep-alive) finds no route there any more
            self._resources.pop(port).routes = BindResource([], self.refusals(port))
        return Reloaded(added, removed, governor, restart_only)

    def _bind_resource(self, bind: Bind) -> BindResource:
        # One count for every route of the bind, kept across reloads.
        slots = self._slots.setdefault(bind.port, SessionSlots(self.relay_options.max_sessions))
        return BindResource(
            [
                RoutedRoute(listener, route, self._route_resources(bind, listener, route, slots))
                for listener in bind.listeners
                for route in listener.routes
            ],
            self.refusals(bind.port),
        )

    def refusals(self, port: int) -> Callable[[bytes, int], None]:
        """Counts what bind C{port} refuses before a route's forwarder (no route: C{route=""}) by method and status."""
        labels = RouteLabels.of(port, "", "")
        return lambda method, status: self.metrics.record_refusal(labels, method, status)

    def _route_resources(self, bind: Bind, listener: Listener, route: Route, slots: SessionSlots) -> Any:
        if not route.backends:
            missing = ErrorResource(500, f"route {route.name} has no backend", "no_backend")
            return lambda route_type: missing
        warn_unguarded(self.log, route)
        self.guard_calls.register(route.policies.prompt_guard.request, self._trust_roots)
        backend = route.backends[0]
        target = BackendTarget.from_backend(backend, route.policies.backend_tls, route.policies.backend_key_header, self._trust_roots)
        api_key, labels = route.policies.api_key, RouteLabels.of(bind.port, listener.name, route.name)
        limits = None
        if route.policies.rate_limits:  # kept by route too: the admin page shows the buckets new requests get
            limits = self.route_limits[labels] = RouteLimits(route.policies.rate_limits, self.reactor.seconds, self.rate_limit_share)
        context = RouteContext(
            self.reactor, target, route.policies, self.metrics, labels, self.access_log, backend.model,
            KeyCheck(api_key) if api_key is not None else None, self.governor, limits,
            self.attributor, self.spans, self.guard_calls, self.tokens,
        )
        built: dict[RouteType, IResource] = {}

        def resource_for(route_type: RouteType) -> IResource:
            # Built on first use: most routes serve one or two types.
            if route_type not in built:
                built[route_type] = self._build(route_type, context, slots)
            return built[route_type]

        self._realtime_routes[context.labels.values()] = resource_for
        return resource_for

    def adopt_call(self, info: CallInfo) -> None:
        """
        Supervise a call another worker made (it died), on the route that
        made it as the config in force has it; raises L{KeyError} for a
        route that is gone (the call cannot be followed nor hung up here).
        """
        resource = self._realtime_routes[info.route](RouteType.REALTIME)
        resource.webrtc.adopt(info)  # type: ignore[attr-defined]

    def _build(self, route_type: RouteType, context: RouteContext, slots: SessionSlots) -> IResource:
        if route_type is RouteType.REALTIME:
            relay = RealtimeRelay(context, self.relay_options, slots)
            self.relays.append(relay)
            relay.resource.webrtc = WebRTCResource(context, self.http_client, self.calls, self.relay_options)
            return relay.resource
        # models is forwarded like passthrough (HTTPForwarder reads no body of it); the
        # config refuses the types agw does not serve.
        return HTTPForwarder(route_type, self.http_client, context, self.in_flight)
