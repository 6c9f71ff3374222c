"""
The gateway as a Twisted service: one listener per bind, plus the stats
and readiness listeners (L{agw.serve._listening}), reloaded in place and
stopped cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

from agw.config import Address, GatewayConfig
from agw.http import HTTPOptions
from agw.metering import GatewayMetrics, Governor
from agw.serve._admin_page import AdminResource
from agw.serve._listening import BindFactory, ListeningService, admin_listener, admin_listeners, ledger_notes, make_site
from agw.serve._operator import OperatorView
from agw.serve._reloaded import Reloaded, ReloadRefused, bind_changes
from agw.serve._site import GatewaySite
from agw.serve._tls import BindTLS, ListenerTLSError, tls_by_port


class Servable(Protocol):
    """What a L{GatewayService} serves: a L{agw.serve.Gateway}."""

    reactor: Any
    config: GatewayConfig
    metrics: GatewayMetrics
    http_options: HTTPOptions
    governor: Governor | None
    retired_governors: list[Governor]
    spans: Any
    relays: list[Any]  # the admin page's sessions (see OperatorView), with calls and route_limits
    calls: Any
    route_limits: dict[Any, Any]

    def resource(self, port: int | None = None) -> IResource: ...

    def drain(self, period: float) -> Deferred[None]: ...

    def reload(self, config: GatewayConfig) -> Reloaded: ...


class GatewayService(MultiService):
    """
    Every listener of a L{Gateway}; stopping it drains first (see
    L{stopService}). Binds listen on C{interface} (all interfaces, IPv4 and
    IPv6, by default); an HTTPS bind serves its listeners' certificates,
    read when the service is made and again on each reload (a certificate
    that cannot be served raises L{agw.serve.ListenerTLSError}).

    A worker process (L{agw.serve._workerpool}) passes C{reuse_ports}: each bind's
    port (config port to actual port) is shared with the other workers
    through C{SO_REUSEPORT}; the stats, readiness and admin listeners are
    the parent's, so C{admin} is false.
    """

    log = Logger()

    def __init__(
        self, gateway: Servable, interface: str = "::", drain_period: float = 5.0,
        reuse_ports: Mapping[int, int] | None = None, admin: bool = True,
    ) -> None:
        super().__init__()
        self.gateway = gateway
        self.drain_period = drain_period
        self.draining = False
        reactor = gateway.reactor
        config = gateway.config
        self.interface = interface
        self._reuse_ports = reuse_ports
        self.binds: dict[int, ListeningService] = {}
        self._factories: dict[int, BindFactory] = {}  # each bind's: its site, and its certificates if HTTPS
        tls = tls_by_port(config)  # raises ListenerTLSError: a certificate that cannot be served
        for bind in config.binds:
            listener = self._bind_listener(bind.port, gateway.resource(bind.port), tls[bind.port])
            listener.setServiceParent(self)
            self.binds[bind.port] = listener
        self.stats: ListeningService | None = None
        self.readiness: ListeningService | None = None
        if admin:
            self.stats, self.readiness = admin_listeners(
                self, reactor, config, gateway.metrics.registry, self.is_ready, lambda: ledger_notes(self.gateway.governor),
            )
        self.admin: ListeningService | None = None
        if admin:  # adminAddr: the operator's page, its JSON and /budgets, read from this process
            page = AdminResource(OperatorView(gateway), lambda: self.gateway.governor, reactor, config.admin_addr.host)
            self.admin = admin_listener(self, reactor, config.admin_addr, page)

    def _bind_listener(self, config_port: int, resource: IResource, tls: BindTLS | None) -> ListeningService:
        reuse = self._reuse_ports
        # A worker shares each bind's port with the others; a bind added by a reload uses its config port.
        port = config_port if reuse is None else reuse.get(config_port, config_port)
        gateway = self.gateway
        site = make_site(resource, gateway.reactor, gateway.http_options, gateway.refusals(config_port))
        factory = self._factories[config_port] = BindFactory(site, tls, front_door=not gateway.http_options.legacy_http)
        return ListeningService(gateway.reactor, Address(self.interface, port), factory, f"bind/{config_port}", reuse_port=reuse is not None)

    def startService(self) -> None:
        super().startService()
        self._start_governor(self.gateway.governor)

    def _start_governor(self, governor: Governor | None) -> None:
        if governor is not None:
            governor.start().addErrback(
                lambda failure: self.log.failure("budgets cannot be read from the database", failure)
            )

    def reload(self, config: GatewayConfig) -> Reloaded:
        """
        Apply C{config} (see L{agw.serve.Gateway.reload}). Binds it adds
        listen first: if one cannot, nothing changes (L{ReloadRefused}).
        Binds it removes stop listening; their open connections finish.
        """
        if self.draining:
            raise ReloadRefused("the gateway is stopping")
        try:
            tls = tls_by_port(config)  # the certificates read again: renewed files are served from now on
        except ListenerTLSError as e:
            raise ReloadRefused(str(e)) from None
        opened: dict[int, ListeningService] = {}
        try:
            for port in bind_changes(self.gateway.config, config)[0]:
                if self._reuse_ports is not None and port == 0:
                    raise ReloadRefused("a new bind on port 0 needs a restart with --workers")
                # Served once the gateway has the new config (below, before the reactor runs again).
                opened[port] = listener = self._bind_listener(port, Resource(), tls[port])
                try:
                    listener.privilegedStartService()  # listens now, or raises SystemExit with the reason
                except SystemExit as e:
                    raise ReloadRefused(str(e).removeprefix("agw: ")) from None
            reloaded = self.gateway.reload(config)
        except ReloadRefused:
            for port, listener in opened.items():
                listener.stopService()
                del self._factories[port]
            raise
        for port, listener in opened.items():
            self._factories[port].site.resource = self.gateway.resource(port)
            listener.setServiceParent(self)
            self.binds[port] = listener
        for port in reloaded.removed_ports:
            self.binds.pop(port).disownServiceParent()
            del self._factories[port]
        for port, factory in self._factories.items():
            factory.tls = tls[port]  # new connections: HTTP or HTTPS, and which certificates, as the new config says
        if reloaded.new_governor is not None:
            self._start_governor(reloaded.new_governor)  # the admin page reads the gateway's governor as it is now
        return reloaded

    def is_ready(self) -> bool:
        """
        Every bind is listening, budgets (if any) were read from their
        ledger once, and the gateway is not stopping.
        """
        governor = self.gateway.governor
        return (
            self.running and not self.draining and all(listener.listening for listener in self.binds.values())
            and (governor is None or governor.ready)
        )

    def when_listening(self) -> Deferred[object]:
        """Fires once every bind listens; fails if one cannot."""
        waits = [listener.when_listening() for listener in self.binds.values()]
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)

    def site_of(self, bind_port: int) -> GatewaySite:
        """The twisted.web site serving bind C{bind_port} (its limits, what it holds)."""
        return self._factories[bind_port].site  # type: ignore[return-value]

    def port_of(self, bind_port: int) -> int:
        """The port bind C{bind_port} actually listens on (differs for port 0)."""
        port = self.binds[bind_port].port
        assert port is not None, "not listening yet"
        return port.getHost().port

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """
        Stop accepting (readiness says 503 from now on), let sessions and
        HTTP requests finish for up to the drain period, close the rest of
        the sessions with 1001, then stop the stats and readiness listeners.
        """
        self.draining = True
        yield DeferredList([listener.stopService() for listener in self.binds.values()])
        yield self.gateway.drain(self.drain_period)
        yield MultiService.stopService(self)
        shutdown = getattr(self.gateway.spans, "shutdown", None)
        if shutdown is not None:  # flush queued spans; it blocks, so in a thread
            reactor = self.gateway.reactor
            yield deferToThreadPool(reactor, reactor.getThreadPool(), shutdown)
        for governor in (self.gateway.governor, *self.gateway.retired_governors):
            if governor is not None:
                yield governor.stop()
        self.draining = False
