"""
The gateway's listeners: L{ListeningService} (one address, bound before
privileges are shed), the sites they serve (a bind's inside TLS when it is
HTTPS: L{BindFactory}), and the stats, readiness and admin listeners.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from agw.config import Address, GatewayConfig
from agw.http import HTTPOptions
from agw.metering import Governor
from agw.serve._admin import readiness_root, stats_root
from agw.serve._admin_page import ADMIN_MAX_BODY
from agw.serve._front import FrontDoorFactory
from agw.serve._reuseport import ReusePortServerEndpoint
from agw.serve._site import GatewaySite
from agw.serve._tls import BindTLS

# Idle HTTP connections are dropped after this long (twisted.web's default
# is 12 hours, an invitation to slowloris).
HTTP_IDLE_TIMEOUT = 60.0


def bind_host(host: str) -> str:
    """The address to bind for C{host}: C{localhost} is IPv4 loopback."""
    return "127.0.0.1" if host == "localhost" else host


class ListeningService(Service):
    """
    Listens on one address while running; C{port} is the bound port. A
    listener that is not C{required} (the admin page) and cannot listen is
    logged, and the gateway serves on without it.
    """

    log = Logger()

    def __init__(
        self, reactor: object, address: Address, factory: IProtocolFactory, label: str, reuse_port: bool = False,
        required: bool = True,
    ) -> None:
        self._reactor = reactor
        self.address = address
        self.factory = factory
        self.label = label
        self._reuse_port = reuse_port
        self.required = required
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
            message = f"agw: {self.label} cannot listen on {self.address.host}:{self.address.port}: {reason}"
            if self.required:
                raise SystemExit(message)
            self.log.error("{message}; not served", message=message.removeprefix("agw: "))
            self._listening = succeed(None)  # type: ignore[arg-type]  # given up: not tried again at start
            return
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

    def _failed(self, failure: Failure) -> None:
        if not self.required:
            reason = getattr(failure.value, "socketError", None) or failure.value
            self.log.error("{label} cannot listen on {host}:{port}: {reason}; not served", label=self.label,
                           host=self.address.host, port=self.address.port, reason=str(reason))
            return
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


@implementer(IOpenSSLServerConnectionCreator)
class BindFactory(Factory):
    """
    One bind's connections: its C{site}'s HTTP, inside TLS while C{tls} (the
    bind's L{BindTLS}, replaced by a reload) says HTTPS. Each new connection
    is served as the config in force says when it arrives; an open one keeps
    its protocol and certificate.
    """

    noisy = False

    def __init__(self, site: Site, tls: BindTLS | None = None, front_door: bool = True) -> None:
        self.site = site
        self.tls = tls
        # agw's own HTTP/1.1 protocol (twisted.web's site serves what it hands off), or the site's own channels.
        self._http: Factory = FrontDoorFactory(site) if front_door and isinstance(site, GatewaySite) else site
        self._tls_factory = TLSMemoryBIOFactory(self, False, self._http)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        if self.tls is None:
            return self._http.buildProtocol(addr)
        return self._tls_factory.buildProtocol(addr)

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        """The TLS of a new connection: the certificates in force now (L{IOpenSSLServerConnectionCreator})."""
        assert self.tls is not None, "a TLS connection on a bind without tls"
        return self.tls.serverConnectionForTLS(protocol)

    def logPrefix(self) -> str:
        return self.site.logPrefix()  # the port's "... starting on" line names the site, as without TLS

    def startFactory(self) -> None:
        self.site.doStart()

    def stopFactory(self) -> None:
        self.site.doStop()


def make_site(
    resource: IResource, reactor: object, options: HTTPOptions | None = None, refused: Callable[[bytes, int], None] | None = None,
) -> GatewaySite:
    """
    A site for one of the gateway's listeners: idle connections time out,
    no tracebacks are shown; request bodies within C{options}' limits (no
    body at all without C{options}: the stats, readiness and admin
    listeners read none, and the first two listen on every interface by
    default); the requests it refuses itself told to C{refused}.
    """
    if options is None:
        site = GatewaySite(resource, reactor, max_request_body=0, max_buffered_bodies=0, refused=refused)
    else:
        site = GatewaySite(
            resource, reactor, options.max_request_body, options.max_buffered_bodies, refused,
            options.upload_min_rate, options.upload_grace,
        )
    site.timeOut = HTTP_IDLE_TIMEOUT
    site.displayTracebacks = False
    site.noisy = False
    return site


def admin_listeners(
    parent: MultiService, reactor: object, config: GatewayConfig, registry: CollectorRegistry, is_ready: Callable[[], bool],
    notes: Callable[[], list[str]] = list,
) -> tuple[ListeningService, ListeningService]:
    """
    The stats listener (C{/metrics} of C{registry}) and the readiness
    listener (C{notes}: lines its answer adds), as children of C{parent}.
    """
    stats = ListeningService(reactor, config.stats_addr, make_site(stats_root(registry), reactor), "stats")
    stats.setServiceParent(parent)
    readiness = ListeningService(reactor, config.readiness_addr, make_site(readiness_root(is_ready, notes), reactor), "readiness")
    readiness.setServiceParent(parent)
    return stats, readiness


def admin_listener(parent: MultiService, reactor: Any, address: Address, resource: IResource) -> ListeningService:
    """
    The adminAddr listener (the page, its JSON, C{/budgets}: see
    L{agw.serve._admin_page}), a child of C{parent}. Not required: a port
    that cannot be bound is logged, and the gateway serves on without it (an
    agw that served without budgets before must not fail to start for its page).
    """
    options = HTTPOptions(max_request_body=ADMIN_MAX_BODY, max_buffered_bodies=64 * ADMIN_MAX_BODY)
    admin = ListeningService(reactor, address, make_site(resource, reactor, options), "admin", required=False)
    admin.setServiceParent(parent)
    return admin


def ledger_notes(governor: Governor | None) -> list[str]:
    """What readiness says about the budget ledger when it is not answering."""
    if governor is None or governor.ledger_up is not False:
        return []
    return [
        f"budget ledger unreachable: budgets enforced at this process's share of what was left; "
        f"{governor.unwritten} charges waiting to be written"
    ]
