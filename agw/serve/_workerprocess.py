"""
L{WorkerProcess}: the pool's side of one worker process of C{twistd agw
--workers N} (all its lives: see L{agw.serve._workerpool}) — its pipes (the
access log passed on whole, its log events re-logged; on the control pipe
C{ready}, its admin API's port, and its calls' lines to the pool's
L{agw.serve._calldirectory.CallDirectory}), whether it serves, and how
often it crashed.
"""

from __future__ import annotations

from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent
from twisted.python.failure import Failure

from agw.serve._calldirectory import CallDirectory
from agw.serve._control import CONTROL_FD, READY, admin_port

STABLE_AFTER = 10.0  # a worker ready this long resets the doubling of restart delays
CRASH_LOOP = 5  # crashes in a row that make a worker (and the pool) unready


class Pool(Protocol):
    """What a worker process reports to: its L{agw.serve._workerpool.WorkerPool}."""

    reactor: Any
    log: Logger
    stdout: IO[bytes]
    directory: CallDirectory

    def ended(self, worker: WorkerProcess, pid: int | None, reason: Failure) -> None: ...


class WorkerProcess(ProcessProtocol):
    """The pool's side of one worker process (all its lives: restarts reuse it)."""

    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.ready_at: float | None = None
        self.admin_port: int | None = None  # its admin API on loopback (the pool's page gathers from it)
        self.crashes = 0
        self.restart: IDelayedCall | None = None
        self._ended: list[Deferred[None]] = []
        self._partial: dict[int, bytes] = {}

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.pool.log.info("worker {index} started (pid {pid})", index=self.index, pid=self.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[childFD] = lines[-1]
        for line in lines[:-1]:
            if childFD == CONTROL_FD:
                self._control(line)
            elif childFD == 1:
                self.pool.stdout.write(line + b"\n")  # access log lines, passed on whole
                self.pool.stdout.flush()
            elif childFD == 2:
                self._relay_log(line)

    def _control(self, line: bytes) -> None:
        if line + b"\n" == READY:
            self.ready_at = self.pool.reactor.seconds()
            self.pool.log.info("worker {index} ready", index=self.index)
            self.pool.directory.worker_ready(self)
        elif (port := admin_port(line)) is not None:
            self.admin_port = port
        else:
            self.pool.directory.received(self, line)  # its calls

    def _relay_log(self, line: bytes) -> None:
        # jsonFileLogObserver writes a record separator, the event as JSON, a newline.
        try:
            event = eventFromJSON(line.lstrip(b"\x1e").decode("utf-8"))
            level = event.get("log_level", LogLevel.info)
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text = f"{text}\n{failure.getTraceback()}"
        except (ValueError, KeyError, TypeError, AttributeError):
            level, text = LogLevel.warn, line.decode("utf-8", "replace")  # say, a crash before logging began
        # Only the formatted text is re-logged, never the worker's raw event fields.
        self.pool.log.emit(level, "{text}", text=text, log_system=f"worker {self.index}")

    def when_ended(self) -> Deferred[None]:
        """Fires when the running process has ended."""
        d: Deferred[None] = Deferred()
        if self.running:
            self._ended.append(d)
        else:
            d.callback(None)
        return d

    def processEnded(self, reason: Failure) -> None:
        pid, self.pid = self.pid, None
        ready_at, self.ready_at = self.ready_at, None
        self.admin_port = None
        self._partial.clear()
        if ready_at is not None and self.pool.reactor.seconds() - ready_at >= STABLE_AFTER:
            self.crashes = 0
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)
        self.pool.ended(self, pid, reason)
