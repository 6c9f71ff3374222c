"""
L{CallRecord}: the one place a call's supervision is recorded (see
L{agw.metering.CallMetrics}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agw.metering._accesslog import NO_ACCESS_LOG, AccessLog, duration_fields
from agw.metering._attribution import Attribution
from agw.metering._call_metrics import CallMetrics
from agw.metering._metrics import RouteLabels


class CallRecord:
    """
    The one place a call's supervision is recorded: its state in
    C{agw_realtime_calls}, its reconnects, and when it ends how, whether it
    was metered whole, and one access-log line (C{realtime.call}).
    """

    def __init__(
        self, metrics: CallMetrics, route: RouteLabels, who: Attribution, call_id: str, clock: Callable[[], float],
        access_log: AccessLog = NO_ACCESS_LOG, transport: str = "webrtc",
    ) -> None:
        self._metrics, self._route, self._who = metrics, route, who
        self._labels = (*route.values(), who.consumer, *who.labels)
        self._clock, self._log = clock, access_log
        self.call_id, self.transport = call_id, transport
        self.started_at = clock()
        self.state: str | None = None
        self.gaps = 0  # times the sideband was lost
        self.reconnects = 0

    def enter(self, state: str | None) -> None:
        """The supervision is now in C{state} (C{None}: over)."""
        if state == self.state:
            return
        if self.state is not None:
            self._metrics.calls.labels(*self._labels, self.state).dec()
        if state is not None:
            self._metrics.calls.labels(*self._labels, state).inc()
        self.state = state

    def lost(self) -> None:
        """The sideband dropped: what the call used until it is back is not seen."""
        self.gaps += 1

    def reconnected(self) -> None:
        self.reconnects += 1
        self._metrics.reconnects.labels(*self._labels).inc()

    def ended(self, end: str, **fields: Any) -> None:
        """The call is over (C{end}: how; C{fields}: more for the log line)."""
        self.enter(None)
        self._metrics.ended.labels(*self._labels, end).inc()
        metered = self.gaps == 0  # a call never supervised was hung up before it could carry anything
        if not metered:
            self._metrics.unmetered.labels(*self._labels).inc()
        self._log.emit(
            "realtime.call", self._route, None, **{
                "agw.call_id": self.call_id, "agw.transport": self.transport, "agw.call.end": end,
                "agw.call.metered": metered, "agw.call.sideband_gaps": self.gaps, **duration_fields(self._clock() - self.started_at),
                **fields, **self._who.log_fields,
            },
        )
