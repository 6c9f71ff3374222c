"""
One worker process of C{twistd agw --workers N}, started by
L{agw.serve._workerpool.WorkerPool} (not by hand): the gateway's binds on ports
shared with the other workers, no stats or readiness listener of its own.

It talks to the pool over four pipes: log events as Twisted JSON log records on standard
error, access log lines on standard output, and control lines on
descriptors 3 and 4 (L{agw.serve._control}): its calls', the port of its
admin API (the admin page's JSON, on loopback: the pool's page gathers
every worker's sessions from it), then C{ready} once every bind listens.
SIGTERM drains and exits 0; so does the death of the pool (Linux's
parent-death signal).
"""

from __future__ import annotations

import base64
import ctypes
import os
import signal
import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python import usage

from agw.serve._control import CONTROL_FD, CONTROL_IN_FD, TOKEN_KEY_ENV, PoolChannel
from agw.serve._options import Options, gateway_from_options

_PR_SET_PDEATHSIG = 1


class WorkerOptions(Options):
    """C{twistd agw}'s options, and where this worker stands in the pool."""

    optParameters = [
        *Options.optParameters,
        ["index", None, 1, "This worker's number in the pool.", int],
        ["ports", None, "", "Each bind's config port and the port to share: 3000=3000,0=41234."],
        ["worker-count", None, 1, "How many workers share the binds (each holds 1/N of every localRateLimit bucket).", int],
    ]

    def shared_ports(self) -> dict[int, int]:
        try:
            pairs = (item.split("=") for item in self["ports"].split(",") if item)
            return {int(config_port): int(port) for config_port, port in pairs}
        except ValueError:
            raise usage.UsageError(f"--ports: expected config_port=port,... got {self['ports']!r}") from None


def die_with_parent() -> None:
    """Ask Linux for SIGTERM when the pool's process dies (nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    # SIGHUP means "reload" (from the pool); until the reloader takes it over, it must not kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The pool's token key: out of the environment before the config is read (no $VAR may name it) or anything spawned.
    encoded = os.environ.pop(TOKEN_KEY_ENV, None)
    token_key = base64.b64decode(encoded) if encoded else None
    options = WorkerOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.exit(f"agw worker: {e}")
    die_with_parent()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    from agw.config import Address
    from agw.serve._admin_page import AdminResource
    from agw.serve._listening import admin_listener
    from agw.serve._operator import OperatorView
    from agw.serve._reload import ConfigReloader
    from agw.serve._service import GatewayService
    from agw.serve._sigterm import CleanExitOnSIGTERM

    log = Logger(namespace="agw.worker")
    # Twisted's JSON log records (eventAsJSON), info and above, to the pool.
    observer = FilteringLogObserver(jsonFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    gateway = gateway_from_options(options, access_log_fields={"agw.worker": options["index"]}, token_key=token_key)
    # The control pipes: this worker's calls are one directory with the other workers' (see agw.serve._control).
    channel = PoolChannel(gateway.calls, reactor)
    StandardIO(channel, stdin=CONTROL_IN_FD, stdout=CONTROL_FD, reactor=reactor)
    gateway.calls.peers = channel
    service = GatewayService(
        gateway, options["interface"], options["drain-period"], reuse_ports=options.shared_ports(), admin=False,
    )
    # The admin page's JSON of this worker, for the pool's page only: loopback, a port of its own.
    page = AdminResource(OperatorView(gateway), lambda: gateway.governor, reactor, "127.0.0.1")
    api = admin_listener(service, reactor, Address("127.0.0.1", 0), page)
    # The pool watches the file and counts reloads; it sends each worker SIGHUP.
    ConfigReloader(reactor, options["config"], options.load, service.reload, watch=False).setServiceParent(service)
    CleanExitOnSIGTERM().setServiceParent(service)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # SIGTERM: drain, then exit
    outcome = {"code": 1}

    def listening(_: object) -> None:
        outcome["code"] = 0
        if api.port is not None:
            channel.admin_api(api.port.getHost().port)
        channel.ready()

    def cannot_listen(failure: Any) -> None:
        log.failure("worker {index} cannot listen", failure, index=options["index"])
        reactor.callWhenRunning(reactor.stop)  # type: ignore[attr-defined]

    service.when_listening().addCallbacks(listening, cannot_listen)
    reactor.run()  # type: ignore[attr-defined]
    sys.exit(outcome["code"])


if __name__ == "__main__":
    main()
