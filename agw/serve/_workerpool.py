"""
C{twistd agw --workers N}: N gateway processes (L{agw.serve._worker}) listening on
each bind's port together (C{SO_REUSEPORT}), and this parent, which keeps
them running and answers for all of them: one C{/metrics} summing every
worker (prometheus-client's multiprocess mode; a dead worker's counts are
folded into one file) and one readiness probe (see L{WorkerPool.is_ready}).

Why not C{twisted.runner.procmon.ProcessMonitor} (read in Twisted 26.10.0):
it spawns with C{env}, C{uid}, C{gid} and C{cwd} only, so a worker cannot
get the extra pipe it reports readiness on; its C{LoggingProtocol} turns
standard output into log events, where the access log must pass through
whole; its C{stopService} returns nothing and does not wait for the
processes to end, so twistd would exit before the workers drained; and
the one hook for a process's exit (C{connectionLost}) is deprecated since
25.5 in favour of a private method, where the pool must fold the dead
worker's metrics and count crashes for readiness. The pool keeps the same
shape (restart with doubling delays, kill after a grace) in a few lines.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import sys
import tempfile
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from agw.config import GatewayConfig
from agw.decisions import new_token_key
from agw.metering import Governor
from agw.serve._admin_page import AdminResource
from agw.serve._calldirectory import CallDirectory
from agw.serve._control import CONTROL_FD, CONTROL_IN_FD, TOKEN_KEY_ENV
from agw.serve._listening import admin_listener, admin_listeners, bind_host, ledger_notes
from agw.serve._poolview import PoolView
from agw.serve._reloaded import Reloaded, ReloadRefused, bind_changes, budget_setup, restart_only_changes
from agw.serve._reuseport import HeldPorts
from agw.serve._setup import governor_for
from agw.serve._workerprocess import CRASH_LOOP, WorkerProcess
from agw.serve._workermetrics import (
    METRICS_DIR_PREFIX,
    WorkerMetrics,
    fold_dead_worker_metrics,
    remove_stale_metrics_dirs,
)

RESTART_DELAY = 0.5  # doubled after each crash in a row, up to:
MAX_RESTART_DELAY = 30.0
STOP_GRACE = 10.0  # after the drain period, before SIGKILL


class WorkerPool(MultiService):
    """
    Runs C{count} worker processes with C{gateway_arguments} (see
    L{agw.serve.Options.gateway_arguments}); restarts a worker that dies;
    stopping sends every worker SIGTERM (they drain) and waits for them.
    """

    log = Logger(namespace="agw.workers")

    def __init__(
        self, reactor: Any, config: GatewayConfig, interface: str, gateway_arguments: list[str], count: int,
        drain_period: float = 5.0, stdout: IO[bytes] | None = None, python: str = sys.executable,
        charge_spool: str = "",
    ) -> None:
        super().__init__()
        self.charge_spool = charge_spool  # the parent replays what stopped workers kept, too
        self.reactor = reactor
        self.config = config
        self.interface = interface
        self.drain_period = drain_period
        self.stdout = stdout if stdout is not None else sys.stdout.buffer
        self._arguments = gateway_arguments
        self._python = python
        self.workers = [WorkerProcess(self, index) for index in range(1, count + 1)]
        # One key for every worker's client secrets (a token minted on one is good on all), kept across their restarts.
        self._token_key = new_token_key()
        self.directory = CallDirectory(self.workers)  # which worker supervises each call
        self.held = HeldPorts(bind_host(interface))
        self.metrics_dir: str | None = None
        self.stopping = False
        self.registry = CollectorRegistry()
        self.registry.register(WorkerMetrics(lambda: self.metrics_dir))
        self.restarts = Counter("agw_worker_restarts", "Worker processes restarted after they died.", registry=self.registry)
        Gauge("agw_workers_ready", "Worker processes ready to serve.", registry=self.registry).set_function(
            lambda: sum(worker.ready for worker in self.workers)
        )
        self.stats, self.readiness = admin_listeners(
            self, reactor, config, self.registry, self.is_ready, lambda: ledger_notes(self.governor),
        )
        # The workers enforce budgets; the parent reads the shared ledger to serve /budgets and the page's budgets.
        self.governor: Governor | None = None
        self._serve_budgets(governor_for(config, reactor, enforcing=False, charge_spool=charge_spool))
        # adminAddr: the page gathers the workers' sessions, rate limits and costs from their admin APIs.
        page = AdminResource(PoolView(self), lambda: self.governor, reactor, config.admin_addr.host)
        self.admin = admin_listener(self, reactor, config.admin_addr, page)

    def _serve_budgets(self, governor: Governor | None) -> Governor | None:
        """Read C{governor}'s budgets for adminAddr from now on (a reload may bring a new one)."""
        old, self.governor = self.governor, governor
        if old is not None and self.running:
            old.stop()
        if governor is not None and self.running:
            governor.start().addErrback(lambda failure: self.log.failure("reading budgets failed", failure))
        return governor

    def is_ready(self) -> bool:
        """
        A quorum: at least one worker serves (the binds are shared, so one
        is enough to answer) and no worker is crash-looping (then something
        is wrong that a restart does not mend); never while stopping.
        """
        return (
            self.running and not self.stopping and any(worker.ready for worker in self.workers)
            and all(worker.ready or worker.crashes < CRASH_LOOP for worker in self.workers)
            and (self.governor is None or self.governor.ready)
        )

    def privilegedStartService(self) -> None:
        # Each bind's port is held by a socket that never listens: port 0
        # becomes a real port every worker shares, kept across restarts.
        self._reserve_ports()
        super().privilegedStartService()

    def _reserve_ports(self) -> None:
        if not self.held:
            try:
                self.held.hold([bind.port for bind in self.config.binds])
            except OSError as e:
                raise SystemExit(f"agw: {e}") from None

    def reload(self, config: GatewayConfig) -> Reloaded:
        """
        Apply C{config}: binds it adds are held first (or nothing changes),
        then every worker is sent SIGHUP and reloads the file itself (a
        worker restarted later starts from the file).
        """
        old = self.config
        restart_only = restart_only_changes(old, config)
        added, removed = bind_changes(old, config)
        if 0 in added:
            raise ReloadRefused("a new bind on port 0 needs a restart with --workers")
        try:
            self.held.hold(list(added))
        except OSError as e:
            raise ReloadRefused(str(e)) from None
        for port in removed:
            self.held.release(port)
        governor = None
        if budget_setup(config) != budget_setup(old):
            governor = self._serve_budgets(governor_for(config, self.reactor, enforcing=False, charge_spool=self.charge_spool))
        self.config = config
        self._signal_all(signal.SIGHUP)
        return Reloaded(added, removed, governor, restart_only)

    def startService(self) -> None:
        self._reserve_ports()
        remove_stale_metrics_dirs()
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        super().startService()
        if self.governor is not None:
            self.governor.start().addErrback(lambda failure: self.log.failure("reading budgets failed", failure))
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: WorkerProcess) -> None:
        worker.restart = None
        ports = ",".join(f"{config_port}={port}" for config_port, port in self.held.ports.items())
        argv = [
            self._python, "-m", "agw.serve._worker", f"--index={worker.index}", f"--ports={ports}",
            f"--worker-count={len(self.workers)}", *self._arguments,
        ]
        # The token key in the environment, not in the arguments: ps shows those to everyone.
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir or "", TOKEN_KEY_ENV: base64.b64encode(self._token_key).decode()}
        self.reactor.spawnProcess(
            worker, self._python, argv, env=env, childFDs={1: "r", 2: "r", CONTROL_FD: "r", CONTROL_IN_FD: "w"},
        )

    def ended(self, worker: WorkerProcess, pid: int | None, reason: Failure) -> None:
        """A worker process ended: forget its live gauges; its calls are adopted; restart it unless stopping."""
        if pid is not None and self.metrics_dir is not None:
            fold_dead_worker_metrics(pid, self.metrics_dir)
        self.directory.worker_ended(worker)
        if self.stopping or not self.running:
            return
        delay = min(RESTART_DELAY * 2**worker.crashes, MAX_RESTART_DELAY)
        worker.crashes += 1
        how = "exited" if reason.check(ProcessDone) else f"died ({reason.value})"
        self.log.warn("worker {index} (pid {pid}) {how}; restarting in {delay}s", index=worker.index, pid=pid, how=how, delay=delay)
        self.restarts.inc()
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """SIGTERM every worker (each drains), wait (SIGKILL after the drain period and a grace), then stop."""
        self.stopping = self.directory.stopping = True  # the workers hang their calls up: none is adopted
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
        ended = DeferredList([worker.when_ended() for worker in self.workers])
        self._signal_all(signal.SIGTERM)
        kill = self.reactor.callLater(self.drain_period + STOP_GRACE, self._signal_all, signal.SIGKILL)
        yield ended
        if kill.active():
            kill.cancel()
        yield MultiService.stopService(self)
        if self.governor is not None:
            yield self.governor.stop()
        self.held.release_all()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None
        self.stopping = self.directory.stopping = False

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.running:
                try:
                    worker.transport.signalProcess(signum)  # type: ignore[union-attr]
                except ProcessExitedAlready:
                    pass
