"""
The process's own log as JSON (C{--log-format json}): one object per line
on standard output, beside the access log's, so that a log shipper reads
one format. Each line has the access log's C{event} (C{"log"}) and
C{time}, then C{level}, C{scope} (the logger's namespace), C{message}, and
C{error} (a traceback) when the event carries a failure. Debug events are
left out, as in the text format.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python.components import Componentized

LOG_FORMATS = ("text", "json")


def log_line(event: dict[str, Any]) -> str:
    """One event as a JSON line."""
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "event": "log",
        "time": round(event.get("log_time") or 0.0, 6),
        "level": getattr(level, "name", str(level)),
        "scope": event.get("log_namespace") or event.get("log_system") or "-",
        "message": formatEvent(event),
    }
    system = event.get("log_system")
    if isinstance(system, str) and system.startswith("worker "):
        record["agw.worker"] = int(system[len("worker "):]) if system[len("worker "):].isdigit() else system
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    return json.dumps(record, default=str) + "\n"


def json_observer(out: IO[str]) -> ILogObserver:
    """An observer writing info and above to C{out} as JSON lines."""
    return FilteringLogObserver(FileLogObserver(out, log_line), [LogLevelFilterPredicate(LogLevel.info)])


class JSONLogged(MultiService):
    """
    A gateway service whose process logs as JSON: twistd asks the
    application it is put in for an C{ILogObserver} before it starts
    logging, so the observer is set on that application (as twistd's docs
    describe for applications that choose their logging).
    """

    def __init__(self, service: Any, out: IO[str]) -> None:
        super().__init__()
        self.gateway_service = service
        self._observer = json_observer(out)
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer)
