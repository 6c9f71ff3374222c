"""
twistd's entry point: C{twistd -n agw -f config.yaml} (see L{Options}).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.error import ReactorNotRunning

from agw.serve._options import Options, gateway_from_options


def makeService(options: Options) -> IService:
    """The gateway's service, from parsed options: one process, or a pool of workers; either reloads its config."""
    from twisted.internet import reactor

    from agw.serve._reload import ConfigReloader

    service: Any
    load = options.load
    if options.worker_count > 1:
        from agw.serve._workerpool import WorkerPool

        service = WorkerPool(
            reactor, options.config_object, options["interface"], options.gateway_arguments(), options.worker_count,
            options["drain-period"], stdout=sys.__stdout__.buffer, charge_spool=options["charge-spool"],
        )
        registry = service.registry
    elif options["demo"]:
        from agw.serve._demo import DemoProvider, demo_config, listen_fake

        port = listen_fake(reactor)
        fake = f"127.0.0.1:{port.getHost().port}"
        options.config_object = demo_config(options.config_object, fake)
        gateway = gateway_from_options(options)
        service = gateway.service(options["interface"], drain_period=options["drain-period"])
        DemoProvider(port, options.config_object, options["interface"]).setServiceParent(service)
        registry = gateway.metrics.registry

        def demo_load() -> Any:  # a reloaded demo config is sent to the fake too
            return demo_config(options.load(), fake)

        load = demo_load
    else:
        gateway = gateway_from_options(options)
        service = gateway.service(options["interface"], drain_period=options["drain-period"])
        registry = gateway.metrics.registry
    ConfigReloader(reactor, options["config"], load, service.reload, registry, watch=not options["no-watch"]).setServiceParent(service)
    CleanExitOnSIGTERM().setServiceParent(service)
    return service


class CleanExitOnSIGTERM(Service):
    """
    twistd stops on SIGTERM, then kills itself with the same signal to
    report how it died (exit 143). A gateway that drained and stopped
    cleanly exits 0 instead: SIGTERM simply stops the reactor.
    """

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        reactor.callWhenRunning(self._install, reactor)  # after twistd installed its own handlers

    def _install(self, reactor: Any) -> None:
        signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(self._stop, reactor))

    def _stop(self, reactor: Any) -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second SIGTERM while stopping: the first one is being carried out


