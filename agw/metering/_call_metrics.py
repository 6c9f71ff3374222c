"""
What happened to WebRTC and SIP calls, as opposed to what they
used: their supervision's states, how they ended, and the calls agw may not
have metered whole. Tokens, costs and budgets of a call are its
L{agw.metering.RealtimeSession}'s, the same as a WebSocket session's.
"""

from __future__ import annotations

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Gauge


# A call's supervision: opening its first sideband, following the call, opening it again, hanging up.
ATTACHING, ATTACHED, RECONNECTING, ENDING = "attaching", "attached", "reconnecting", "ending"

# How a call ended (the "end" label): the provider ended it (the caller left), the client hung it up through agw,
# a Block budget or the route's rate limit stopped it, its sideband could not come back, the gateway stopped,
# the call was never supervised (its first sideband could not be opened), or an operator ended it (the admin page).
PROVIDER, CLIENT, BUDGET, SIDEBAND_LOST, SHUTDOWN, UNSUPERVISED, OPERATOR = (
    "provider", "client_hangup", "budget", "sideband_lost", "shutdown", "unsupervised", "operator",
)


@frozen
class CallMetrics:
    """The call collectors; see docs/metrics.md for each."""

    calls: Gauge
    ended: Counter
    unmetered: Counter
    reconnects: Counter

    @classmethod
    def declare(cls, registry: CollectorRegistry, route: tuple[str, ...], who: tuple[str, ...]) -> CallMetrics:
        """Declare them in C{registry}: C{route} labels everywhere, C{who} (consumer, …) on each."""
        return cls(
            calls=Gauge(
                "agw_realtime_calls", "WebRTC and SIP calls supervised now, by the state of their sideband.",
                route + who + ("state",), registry=registry, multiprocess_mode="livesum",
            ),
            ended=Counter(
                "agw_realtime_calls_ended", "WebRTC and SIP calls ended, by how (provider, client_hangup, budget, sideband_lost, ...).",
                route + who + ("end",), registry=registry,
            ),
            unmetered=Counter(
                "agw_realtime_calls_unmetered",
                "Calls agw may not have metered whole: their sideband was lost for a while (or for good).",
                route + who, registry=registry,
            ),
            reconnects=Counter(
                "agw_realtime_sideband_reconnects", "Sidebands opened again after they dropped.",
                route + who, registry=registry,
            ),
        )
