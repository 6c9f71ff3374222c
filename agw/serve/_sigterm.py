"""
L{CleanExitOnSIGTERM}: SIGTERM stops the reactor (the gateway drains on
the way out) and the process exits 0; a second SIGTERM while stopping is
no error.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import ReactorNotRunning


class CleanExitOnSIGTERM(Service):
    """
    twistd stops on SIGTERM, then kills itself with the same signal to
    report how it died (exit 143). A gateway that drained and stopped
    cleanly exits 0 instead: SIGTERM simply stops the reactor. A worker
    gets SIGTERM twice when a service manager signals the whole group (its
    own, then the pool's): Twisted's handler would log the second as a
    critical C{ReactorNotRunning}.
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


