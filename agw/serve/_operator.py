"""
What the admin page shows of one gateway process (L{OperatorView}): its
live Realtime sessions, its consumers' budgets, its routes' rate limits and
its recent costs, read from the objects that meter and enforce them — and
the one thing it may do, end a session. Consumers are named by their key's
C{metadata.name}; no key, secret or header is ever part of it.
"""

from __future__ import annotations

from typing import Any

from agw.config import GatewayConfig
from agw.decisions import RouteLimits
from agw.metering import Governor, RealtimeSession, RouteLabels

# A client names the model in its handshake: shown cut to this many characters.
MAX_MODEL_TEXT = 128
OPERATOR_REASON = "closed by operator"


def session_json(session: RealtimeSession, now: float, closing: bool) -> dict[str, Any] | None:
    """One live session for the page (C{None}: not started, or over)."""
    started_at = session.started_at
    if started_at is None:
        return None
    model = session.response_model or session.request_model
    return {
        "id": session.id, "consumer": session.who.name, "model": model[:MAX_MODEL_TEXT] if model else None,
        "bind": session.route.bind, "listener": session.route.listener, "route": session.route.route,
        "transport": session.transport, "state": "closing" if closing else "open",
        "started_at": started_at, "age_seconds": round(max(0.0, now - started_at), 1),
        "tokens": dict(session.totals), "cost_usd": float(session.cost), "responses": session.responses,
        "responses_in_progress": session.responses_in_progress + session.responses_requested,
        "responses_refused": session.responses_refused,
    }


def consumer_names(config: GatewayConfig) -> list[str]:
    """Every consumer C{config}'s client keys name (C{metadata.name}), once each, sorted."""
    return sorted({
        key.name for bind in config.binds for listener in bind.listeners for route in listener.routes
        if route.policies.api_key is not None for key in route.policies.api_key.keys if key.name is not None
    })


def consumers_json(config: GatewayConfig, governor: Governor | None, now: float) -> dict[str, Any]:
    """Each consumer and where its budgets stand, and whether the budget ledger answers."""
    consumers = [
        {"name": name, "budgets": [state.as_json(now) for state in governor.states(name)] if governor is not None else []}
        for name in consumer_names(config)
    ]
    ledger = None if governor is None else {"up": governor.ledger_up, "unwritten": governor.unwritten}
    return {"consumers": consumers, "ledger": ledger}


def rate_limits_json(limits: dict[RouteLabels, RouteLimits]) -> list[dict[str, Any]]:
    """Each route's C{localRateLimit} buckets as new requests find them."""
    return [
        {
            "bind": labels.bind, "listener": labels.listener, "route": labels.route,
            "buckets": [
                {"kind": bucket.kind, "limit": bucket.capacity, "remaining": bucket.remaining, "reset_seconds": bucket.reset_seconds}
                for bucket in route_limits.buckets
            ],
        }
        for labels, route_limits in limits.items()
    ]


class OperatorView:
    """
    The admin page's data in one gateway process (a L{agw.serve.Gateway}),
    read afresh on each call: the page is as live as its polling.
    """

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def _now(self) -> float:
        return float(self._gateway.reactor.seconds())

    def sessions(self) -> dict[str, Any]:
        """Every live Realtime session: relayed WebSockets, then supervised WebRTC calls; oldest first."""
        now, found = self._now(), []
        for relay in self._gateway.relays:  # the relays of earlier configs too: their sessions go on
            for leg in list(relay.sessions):
                if leg.session is not None:
                    found.append(session_json(leg.session, now, closing=leg.closed_with is not None))
        for supervisor in self._gateway.calls:
            found.append(session_json(supervisor.session, now, closing=supervisor.end is not None))
        sessions = sorted((entry for entry in found if entry is not None), key=lambda entry: entry["started_at"])
        return {"sessions": sessions, "now": now}

    def consumers(self) -> dict[str, Any]:
        """Consumers with their budgets, and every route's rate limits."""
        gateway = self._gateway
        return {**consumers_json(gateway.config, gateway.governor, self._now()), "rate_limits": rate_limits_json(gateway.route_limits)}

    def costs(self) -> dict[str, Any]:
        """Recent cost by consumer and model (see L{agw.metering.RecentCosts})."""
        return dict(self._gateway.metrics.recent.summary())

    def close(self, session_id: str, reason: str = OPERATOR_REASON) -> bool:
        """
        End session C{session_id} as a shutdown would, with 1000 and
        C{reason} (its usage still read); C{False}: no such session here.
        """
        if any(relay.end(session_id, 1000, reason) for relay in self._gateway.relays):
            return True
        return bool(self._gateway.calls.end(session_id))
