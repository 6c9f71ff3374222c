"""
Live reload: the config file is watched (inotify on Linux, polling
elsewhere) and C{SIGHUP} reloads it. A valid new config is applied to new
requests and sessions; an invalid one is refused with one log line and the
running config stays.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from agw.config import ConfigError, GatewayConfig
from agw.serve._reloaded import Reloaded, ReloadRefused

# Editors save in bursts (truncate, write, rename); one look after the burst.
SETTLE_SECONDS = 0.2
POLL_SECONDS = 2.0
SUCCESS, FAILURE = "success", "failure"


def file_hash(path: str) -> str | None:
    """The first 16 hex digits of the SHA-256 of C{path}'s bytes; C{None} if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None


class ConfigReloader(Service):
    """
    Reloads the config at C{path}: C{load} reads and checks it (raising
    L{ConfigError}), C{apply} puts it into service (raising
    L{ReloadRefused}). With a C{registry}, counts reloads
    (C{agw_config_reloads_total{result}}) and shows the loaded file's hash
    (C{agw_config_info{hash}}). C{watch}: reload when the file changes;
    C{sighup}: reload on C{SIGHUP} (always, even if the file is the same:
    files it names, such as catalogs, may have changed).
    """

    log = Logger(namespace="agw.reload")

    def __init__(
        self, reactor: Any, path: str, load: Callable[[], GatewayConfig], apply: Callable[[GatewayConfig], Reloaded],
        registry: CollectorRegistry | None = None, watch: bool = True, sighup: bool = True,
        poll_seconds: float = POLL_SECONDS, inotify: bool = True,
    ) -> None:
        self._reactor = reactor
        self.path = os.path.abspath(path)
        self._load = load
        self._apply = apply
        self._watch = watch
        self._sighup = sighup
        self._poll_seconds = poll_seconds
        self._inotify = inotify  # False: poll, as where inotify is missing
        self.hash = file_hash(self.path)  # of the config being served
        self._refused: str | None = None  # hash of the last file refused: not retried until it changes
        self._settle: IDelayedCall | None = None
        self._stop_watching: Callable[[], None] | None = None
        self._previous_handler: Any = None
        self._reloads: Counter | None = None
        self._info: Gauge | None = None
        if registry is not None:
            self._reloads = Counter("agw_config_reloads", "Config reloads, by result (success, failure).", ("result",), registry=registry)
            for result in (SUCCESS, FAILURE):
                self._reloads.labels(result)
            self._info = Gauge("agw_config_info", "The config being served: its file's hash (first 16 hex of SHA-256).", ("hash",), registry=registry)
            self._info.labels(self.hash or "").set(1)

    def startService(self) -> None:
        super().startService()
        if self._sighup:
            self._reactor.callWhenRunning(self._install_sighup)  # after twistd installed its own handlers
        if self._watch:
            self._stop_watching = self._watch_file()

    def stopService(self) -> None:
        super().stopService()
        if self._stop_watching is not None:
            self._stop_watching()
            self._stop_watching = None
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _install_sighup(self) -> None:
        if not self.running:
            return
        self._previous_handler = signal.signal(
            signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload, "SIGHUP"),
        )

    def _watch_file(self) -> Callable[[], None]:
        """Watch the file's directory (editors and Kubernetes replace files by renaming); how to stop."""
        try:
            if not self._inotify:
                raise NotImplementedError("polling asked for")
            from twisted.internet import inotify

            notifier = inotify.INotify(self._reactor)
            notifier.startReading()
            mask = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_ATTRIB
            notifier.watch(FilePath(os.path.dirname(self.path)), mask=mask, callbacks=[lambda *_: self._changed()])
            return notifier.loseConnection
        except (ImportError, OSError, NotImplementedError):
            poll = LoopingCall(self.check)
            poll.clock = self._reactor
            poll.start(self._poll_seconds, now=False)
            return poll.stop

    def _changed(self) -> None:
        if self._settle is not None and self._settle.active():
            self._settle.reset(SETTLE_SECONDS)
        else:
            self._settle = self._reactor.callLater(SETTLE_SECONDS, self.check)

    def check(self) -> None:
        """Reload if the file's bytes differ from the served config's (and from the last refused file's)."""
        current = file_hash(self.path)
        if current is not None and current != self.hash and current != self._refused:
            self.reload("file changed")

    def reload(self, reason: str) -> bool:
        """Load, check and apply the file now; C{True} if the new config is being served."""
        new_hash = file_hash(self.path)
        try:
            reloaded = self._apply(self._load())
        except (ConfigError, ReloadRefused) as e:
            self._refused = new_hash
            self._count(FAILURE)
            self.log.error(
                "config reload refused ({reason}): {error}; still serving {hash}", reason=reason, error=str(e), hash=self.hash,
            )
            return False
        except Exception:
            # A failure nothing foresaw: logged with its traceback, and the
            # watcher goes on (an exception out of a poll would stop it).
            self._refused = new_hash
            self._count(FAILURE)
            self.log.failure("config reload failed ({reason}); still serving {hash}", reason=reason, hash=self.hash)
            return False
        if self._info is not None:
            self._info.remove(self.hash or "")
            self._info.labels(new_hash or "").set(1)
        self.hash, self._refused = new_hash, None
        self._count(SUCCESS)
        later = f"; on restart only: {', '.join(reloaded.restart_only)}" if reloaded.restart_only else ""
        self.log.info(
            "config reloaded ({reason}): {path} {hash}, binds added {added}, removed {removed}{later}",
            reason=reason, path=self.path, hash=new_hash, added=list(reloaded.added_ports), removed=list(reloaded.removed_ports),
            later=later,
        )
        return True

    def _count(self, result: str) -> None:
        if self._reloads is not None:
            self._reloads.labels(result).inc()
