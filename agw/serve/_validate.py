"""
What C{twistd agw --validate-only} prints for a config that loaded: where
agw would listen and what it would serve, without a secret in it.
"""

from __future__ import annotations

from agw.config import Address, GatewayConfig


def describe(config: GatewayConfig, path: str, interface: str) -> str:
    """Lines naming C{path} valid, then its binds, routes and side ports."""
    lines = [f"{path}: valid"]
    for bind in config.binds:
        https = [listener.tls.cert for listener in bind.listeners if listener.tls is not None]
        served = f" (HTTPS: {', '.join(https)})" if https else ""
        lines.append(f"bind/{bind.port}: {Address(interface, bind.port).authority}{served}")
        for listener in bind.listeners:
            for route in listener.routes:
                backends = ", ".join(
                    f"{backend.name} ({backend.host_override or (f'Azure {backend.azure.host}' if backend.azure else 'OpenAI')})"
                    for backend in route.backends
                )
                lines.append(f"  {listener.name}/{route.name}: {backends}")
    side: tuple[tuple[str, Address], ...] = (
        ("stats", config.stats_addr), ("readiness", config.readiness_addr), ("admin", config.admin_addr),
    )
    lines.append("  ".join(f"{name}: {address.authority}" for name, address in side))
    if config.database_url is not None:
        # The scheme only: the rest of the URL may hold a password.
        lines.append(f"budgets: {config.database_url.value.partition('://')[0]}")
    return "\n".join(lines) + "\n"
