"""
The Realtime relay's own metrics (sessions, messages, bytes, drops, close
codes, refusals), declared in the gateway's registry by L{GatewayMetrics}.
"""

from __future__ import annotations

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Close codes a client can send are 1000-4999; registered ones (RFC 6455,
# IANA) are labelled as they are, the rest by range, so a client cannot
# make a series per code.
_REGISTERED_CLOSE_CODES = frozenset(range(1000, 1016))


def close_code_label(code: int | None) -> str:
    """The C{code} label of a session end: the registered code, C{3xxx}/C{4xxx}, C{other}, or C{none} (no close frame)."""
    if code is None:
        return "none"
    if code in _REGISTERED_CLOSE_CODES:
        return str(code)
    if 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return "other"


@frozen
class RealtimeMetrics:
    """The Realtime collectors; see docs/metrics.md for each."""

    sessions: Gauge
    session_duration: Histogram
    messages: Counter
    bytes: Counter
    dropped: Counter
    closes: Counter
    refusals: Counter

    @classmethod
    def declare(cls, registry: CollectorRegistry, route: tuple[str, ...], who: tuple[str, ...]) -> RealtimeMetrics:
        """Declare them in C{registry}: C{route} labels everywhere, C{who} (consumer, …) on sessions."""
        return cls(
            sessions=Gauge(
                "agw_realtime_sessions", "Realtime sessions open now.", route + who, registry=registry,
                multiprocess_mode="livesum",  # with workers: the sum over live workers
            ),
            session_duration=Histogram(
                "agw_realtime_session_duration_seconds", "Realtime session duration (OpenAI ends sessions at 60 minutes).",
                route + who, buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 2700, 3600, 3900), registry=registry,
            ),
            messages=Counter(
                "agw_realtime_messages", "Realtime messages relayed, by direction (client_to_upstream, upstream_to_client).",
                route + ("direction",), registry=registry,
            ),
            bytes=Counter(
                "agw_realtime_bytes", "Realtime message payload bytes relayed (decompressed), by direction.",
                route + ("direction",), registry=registry,
            ),
            dropped=Counter(
                "agw_realtime_dropped_messages",
                "Realtime messages not relayed because their receiver was already closing, by direction.",
                route + ("direction",), registry=registry,
            ),
            closes=Counter(
                "agw_realtime_closes",
                "Realtime sessions ended, by the close code the client's leg ended with (none: no close frame).",
                route + ("code",), registry=registry,
            ),
            refusals=Counter(
                "agw_realtime_refusals",
                "Realtime requests refused: handshakes by HTTP status, and response.create events (status response.create).",
                route + ("status",), registry=registry,
            ),
        )


class MessageCounts:
    """
    The messages and bytes one session relays, per direction, added to
    C{metrics} by L{flush} (every few seconds, and at the end): two counter
    increments per message would cost more than the rest of the accounting.
    """

    def __init__(self, metrics: RealtimeMetrics, route: tuple[str, ...], directions: tuple[str, ...]) -> None:
        self._metrics, self._route = metrics, route
        self._messages = {d: metrics.messages.labels(*route, d) for d in directions}
        self._bytes = {d: metrics.bytes.labels(*route, d) for d in directions}
        self._unflushed = {d: [0, 0] for d in directions}  # messages, bytes since the last flush

    def relayed(self, direction: str, size: int) -> None:
        """One message of C{size} bytes passed."""
        unflushed = self._unflushed[direction]
        unflushed[0] += 1
        unflushed[1] += size

    def dropped(self, direction: str) -> None:
        """A message could not be relayed: its receiver was already closing."""
        self._metrics.dropped.labels(*self._route, direction).inc()

    def flush(self) -> None:
        """Add the messages and bytes relayed since the last flush to the metrics."""
        for direction, unflushed in self._unflushed.items():
            if unflushed[0]:
                self._messages[direction].inc(unflushed[0])
                self._bytes[direction].inc(unflushed[1])
                unflushed[0] = unflushed[1] = 0
