"""
What a config reload tells the service that runs the gateway
(L{agw.serve.Gateway.reload}): the outcome, or why it was refused.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from agw.config import GatewayConfig
from agw.metering import Catalog, CatalogError, Governor, catalog_for
from agw.routing import TrustRootError, read_trust_root


class ReloadRefused(Exception):
    """A new config cannot be applied to a running gateway (the message says why); the old one stays."""


@frozen
class Reloaded:
    """What a reload changed that the service must act on."""

    added_ports: tuple[int, ...]
    removed_ports: tuple[int, ...]
    new_governor: Governor | None  # to start (the old one keeps serving sessions opened before)
    restart_only: tuple[str, ...]  # settings that take effect on the next start


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """
    Settings of C{new} a running process cannot take (listed, the rest is
    applied); raises L{ReloadRefused} for a change nothing else can be
    applied without (metric label names).
    """
    if [label for label, _ in old.metric_fields] != [label for label, _ in new.metric_fields]:
        raise ReloadRefused("config.metrics.fields.add changed: metric labels change on restart only")
    return tuple(
        name for name, before, after in (
            ("config.statsAddr", old.stats_addr, new.stats_addr),
            ("config.readinessAddr", old.readiness_addr, new.readiness_addr),
            ("config.adminAddr", old.admin_addr, new.admin_addr),
            ("config.workers", old.workers, new.workers),
            ("config.tracing", old.tracing, new.tracing),
        ) if before != after
    )


def bind_changes(old: GatewayConfig, new: GatewayConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The bind ports C{new} adds to C{old}, and those it removes, in file order."""
    before, after = [bind.port for bind in old.binds], [bind.port for bind in new.binds]
    return tuple(port for port in after if port not in before), tuple(port for port in before if port not in after)


def budget_setup(config: GatewayConfig) -> tuple[Any, ...]:
    """What a L{Governor} is built from: a reload keeps the running one while this is unchanged."""
    keys = tuple(
        (key.digest, key.metadata.get("name"), key.budgets) for bind in config.binds for listener in bind.listeners
        for route in listener.routes if route.policies.api_key is not None for key in route.policies.api_key.keys
    )
    return (config.database_url.value if config.database_url else None, keys)


def files_named(config: GatewayConfig) -> tuple[Catalog | None, dict[str, bytes]]:
    """
    The files C{config} names that applying it reads: its model catalog,
    and its trust roots (C{backendTLS.root}, moderation guards') as path ->
    PEM. Read now, once, before anything is applied (what applies the
    config takes them from here, not from the files again: a file that
    changes in between cannot leave a reload half applied); raises
    L{ReloadRefused} for one that cannot be read or used.
    """
    try:
        catalog = catalog_for(config.model_catalog)
        roots: dict[str, bytes] = {}
        for route in (route for bind in config.binds for listener in bind.listeners for route in listener.routes):
            tls = route.policies.backend_tls
            paths = [tls.root if tls is not None else None] + [
                guard.moderation.tls_root for guard in route.policies.prompt_guard.request if guard.moderation is not None
            ]
            for path in paths:
                if path is not None and path not in roots:
                    roots[path] = read_trust_root(path)
    except (CatalogError, TrustRootError) as e:
        raise ReloadRefused(str(e)) from None
    return catalog, roots
