"""
What a gateway is built with besides its routes: the budgets' L{Governor}
(for a process that enforces them, or a C{--workers} parent that only
reads the ledger) and where spans go.
"""

from __future__ import annotations

from typing import Any

from agw.config import ClientKey, GatewayConfig
from agw.metering import NO_SPANS, BudgetLedger, ChargeSpool, GatewayMetrics, Governor, ReserveOptions, SpanSink, ledger_identity


def client_keys(config: GatewayConfig) -> list[ClientKey]:
    """Every client key of C{config}, route by route."""
    return [
        key for bind in config.binds for listener in bind.listeners for route in listener.routes
        if route.policies.api_key is not None for key in route.policies.api_key.keys
    ]


def governor_for(
    config: GatewayConfig, reactor: Any, metrics: GatewayMetrics | None = None, enforcing: bool = True,
    reserve: ReserveOptions = ReserveOptions(), charge_spool: str = "",
) -> Governor | None:
    """
    The budgets of C{config}'s client keys, or C{None} if no key has any (a
    L{Governor} is started by its service); C{enforcing}: this process
    decides on requests (a C{--workers} parent only reads the ledger);
    C{charge_spool}: a directory for charges the ledger cannot take at stop
    (empty: none).
    """
    keys = client_keys(config)
    if config.database_url is None or not any(key.budgets for key in keys):
        return None
    url = config.database_url.value
    return Governor(
        keys, BudgetLedger(url, reactor), reactor,
        on_change=metrics.record_budget if metrics is not None else None,
        on_ledger=metrics.record_ledger if metrics is not None else None, enforcing=enforcing, reserve=reserve,
        spool=ChargeSpool(charge_spool, ledger_identity(url)) if charge_spool else None,
    )


def spans_for(config: GatewayConfig) -> SpanSink:
    """Where C{config}'s spans go: OTLP (C{config.tracing}), or nowhere."""
    if config.tracing is None:
        return NO_SPANS
    from agw.tracing import OTelSpans

    return OTelSpans(config.tracing)
