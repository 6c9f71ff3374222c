"""
twistd's entry point: C{twistd -n agw -f config.yaml} (see L{Options}).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService

from agw.serve._options import Options, gateway_from_options
from agw.serve._sigterm import CleanExitOnSIGTERM


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
        DemoProvider(port, options.config_object, options["interface"], options["log-format"] == "json").setServiceParent(service)
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
    if options["log-format"] == "json":
        from agw.serve._logs import JSONLogged

        return JSONLogged(service, sys.stdout)
    return service
