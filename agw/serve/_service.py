"""
The gateway as a Twisted service: one listener per bind, plus the stats
and readiness listeners, stopped cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from agw.config import Address, GatewayConfig
from agw.http import HTTPOptions
from agw.metering import GatewayMetrics, Governor
from agw.serve._admin import admin_root, readiness_root, stats_root
from agw.serve._reloaded import Reloaded, ReloadRefused
from agw.serve._reuseport import ReusePortServerEndpoint
from agw.serve._site import GatewaySite

# Idle HTTP connections are dropped after this long (twisted.web's default
# is 12 hours, an invitation to slowloris).
HTTP_IDLE_TIMEOUT = 60.0


class Servable(Protocol):
    """What a L{GatewayService} serves: a L{agw.serve.Gateway}."""

    reactor: Any
    config: GatewayConfig
    metrics: GatewayMetrics
    http_options: HTTPOptions
    governor: Governor | None
    retired_governors: list[Governor]
    spans: Any

    def resource(self, port: int | None = None) -> IResource: ...

    def drain(self, period: float) -> Deferred[None]: ...

    def reload(self, config: GatewayConfig) -> Reloaded: ...


def bind_host(host: str) -> str:
    """The address to bind for C{host}: C{localhost} is IPv4 loopback."""
    return "127.0.0.1" if host == "localhost" else host


class ListeningService(Service):
    """Listens on one address while running; C{port} is the bound port."""

    log = Logger()

    def __init__(
        self, reactor: object, address: Address, factory: IProtocolFactory, label: str, reuse_port: bool = False,
    ) -> None:
        self._reactor = reactor
        self.address = address
        self.factory = factory
        self.label = label
        self._reuse_port = reuse_port
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def _endpoint(self) -> IStreamServerEndpoint:
        host = bind_host(self.address.host)
        if self._reuse_port:
            return ReusePortServerEndpoint(self._reactor, self.address.port, host)  # type: ignore[arg-type]
        if ":" in host:
            return TCP6ServerEndpoint(self._reactor, self.address.port, interface=host)  # type: ignore[arg-type]
        return TCP4ServerEndpoint(self._reactor, self.address.port, interface=host)  # type: ignore[arg-type]

    def privilegedStartService(self) -> None:
        """
        Under twistd: listen now, before the reactor runs (and before
        privileges are shed). A port that cannot be bound stops twistd at
        once with one line and a non-zero exit status.
        """
        super().privilegedStartService()
        if self._listening is not None:
            return  # listening already (a bind a reload added: MultiService.addService starts it again)
        outcome: list[object] = []
        self._endpoint().listen(self.factory).addBoth(outcome.append)  # TCP endpoints listen synchronously
        if outcome and isinstance(outcome[0], Failure):
            error = outcome[0].value
            reason = getattr(error, "socketError", None) or error  # CannotListenError repeats the address
            raise SystemExit(f"agw: {self.label} cannot listen on {self.address.host}:{self.address.port}: {reason}")
        if outcome:
            self._listening = succeed(self._listened(outcome[0]))  # type: ignore[arg-type]

    def startService(self) -> None:
        super().startService()
        if self._listening is not None:
            return  # listening since privilegedStartService
        self._listening = self._endpoint().listen(self.factory)
        self._listening.addCallback(self._listened)
        # Embedded (no privileged start): a port that cannot be bound stops the reactor, with the reason logged.
        self._listening.addErrback(self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info("{label} listening on {host}:{port}", label=self.label, host=self.address.host, port=port.getHost().port)
        return port

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once listening; fails if it could not listen."""
        assert self._listening is not None, "not started"
        done: Deferred[IListeningPort] = Deferred()

        def report(result: object) -> object:
            if self.port is not None:
                done.callback(self.port)
            else:
                done.errback(CannotListenError(self.address.host, self.address.port, None))
            return result

        self._listening.addBoth(report)
        return done

    def _failed(self, failure: object) -> None:
        self.log.failure("{label} cannot listen on {host}:{port}", failure, label=self.label, host=self.address.host, port=self.address.port)
        if getattr(self._reactor, "running", False):
            self._reactor.stop()  # type: ignore[attr-defined]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.port = None
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        listening.addCallback(lambda port: port.stopListening() if port is not None else None)
        return listening

    @property
    def listening(self) -> bool:
        return self.port is not None


def make_site(resource: IResource, reactor: object, options: HTTPOptions | None = None) -> Site:
    """
    A site for one of the gateway's listeners: idle connections time out,
    no tracebacks are shown; request bodies within C{options}' limits.
    """
    if options is None:
        site = GatewaySite(resource, reactor)
    else:
        site = GatewaySite(resource, reactor, options.max_request_body, options.max_buffered_bodies)
    site.timeOut = HTTP_IDLE_TIMEOUT
    site.displayTracebacks = False
    site.noisy = False
    return site


def admin_listeners(
    parent: MultiService, reactor: object, config: GatewayConfig, registry: CollectorRegistry, is_ready: Callable[[], bool],
) -> tuple[ListeningService, ListeningService]:
    """The stats listener (C{/metrics} of C{registry}) and the readiness listener, as children of C{parent}."""
    stats = ListeningService(reactor, config.stats_addr, make_site(stats_root(registry), reactor), "stats")
    stats.setServiceParent(parent)
    readiness = ListeningService(reactor, config.readiness_addr, make_site(readiness_root(is_ready), reactor), "readiness")
    readiness.setServiceParent(parent)
    return stats, readiness


class GatewayService(MultiService):
    """
    Every listener of a L{Gateway}; stopping it drains first (see
    L{stopService}). Binds listen on C{interface} (all interfaces, IPv4 and
    IPv6, by default).

    A worker process (L{agw.serve._workerpool}) passes C{reuse_ports}: each bind's
    port (config port to actual port) is shared with the other workers
    through C{SO_REUSEPORT}; the stats and readiness listeners are the
    parent's, so C{admin} is false.
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
        for bind in config.binds:
            listener = self._bind_listener(bind.port, gateway.resource(bind.port))
            listener.setServiceParent(self)
            self.binds[bind.port] = listener
        self.stats: ListeningService | None = None
        self.readiness: ListeningService | None = None
        if admin:
            self.stats, self.readiness = admin_listeners(self, reactor, config, gateway.metrics.registry, self.is_ready)
        self.admin: ListeningService | None = None
        if admin and gateway.governor is not None:
            # adminAddr serves the budgets' read-out (only when there are budgets to show).
            self.admin = ListeningService(
                reactor, config.admin_addr, make_site(admin_root(gateway.governor, reactor), reactor), "admin",
            )
            self.admin.setServiceParent(self)

    def _bind_listener(self, config_port: int, resource: IResource) -> ListeningService:
        reuse = self._reuse_ports
        # A worker shares each bind's port with the others; a bind added by a reload uses its config port.
        port = config_port if reuse is None else reuse.get(config_port, config_port)
        gateway = self.gateway
        site = make_site(resource, gateway.reactor, gateway.http_options)
        return ListeningService(gateway.reactor, Address(self.interface, port), site, f"bind/{config_port}", reuse_port=reuse is not None)

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
        opened: dict[int, ListeningService] = {}
        try:
            for bind in config.binds:
                if bind.port not in self.binds:
                    if self._reuse_ports is not None and bind.port == 0:
                        raise ReloadRefused("a new bind on port 0 needs a restart with --workers")
                    # Served once the gateway has the new config (below, before the reactor runs again).
                    opened[bind.port] = listener = self._bind_listener(bind.port, Resource())
                    try:
                        listener.privilegedStartService()  # listens now, or raises SystemExit with the reason
                    except SystemExit as e:
                        raise ReloadRefused(str(e).removeprefix("agw: ")) from None
            reloaded = self.gateway.reload(config)
        except ReloadRefused:
            for listener in opened.values():
                listener.stopService()
            raise
        for port, listener in opened.items():
            listener.factory.resource = self.gateway.resource(port)  # type: ignore[attr-defined]
            listener.setServiceParent(self)
            self.binds[port] = listener
        for port in reloaded.removed_ports:
            self.binds.pop(port).disownServiceParent()
        if reloaded.new_governor is not None:
            self._start_governor(reloaded.new_governor)
            if self.admin is not None:
                self.admin.factory.resource = admin_root(reloaded.new_governor, self.gateway.reactor)  # type: ignore[attr-defined]
        return reloaded

    def is_ready(self) -> bool:
        """Every bind is listening (and the gateway is not stopping)."""
        return self.running and not self.draining and all(listener.listening for listener in self.binds.values())

    def when_listening(self) -> Deferred[object]:
        """Fires once every bind listens; fails if one cannot."""
        waits = [listener.when_listening() for listener in self.binds.values()]
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)

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
                governor.stop()
        self.draining = False
