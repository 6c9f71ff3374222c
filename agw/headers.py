"""
What the gateway sends upstream of a client's headers: hop-by-hop headers
and client credentials out, the route's transformations applied, the
backend key in.
"""

from __future__ import annotations

from collections.abc import Iterable

from agw.config import Policies

# RFC 9110 hop-by-hop headers and framing the gateway recomputes.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# Client credentials: the backend key replaces them.
CREDENTIALS = frozenset({"authorization", "api-key"})


def upstream_headers(
    client_headers: Iterable[tuple[str, str]], policies: Policies, also_drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """
    The client's headers (lower-case names) minus hop-by-hop headers,
    C{also_drop} and the route's C{remove} list, with C{set}/C{add} applied.
    With a backend key, client credentials are replaced by
    C{Authorization: Bearer <key>}; without one they pass through.
    """
    transform = policies.request_headers
    dropped = HOP_BY_HOP | set(also_drop) | set(transform.remove)
    if policies.backend_key is not None:
        dropped |= CREDENTIALS
    headers = [(name, value) for name, value in client_headers if name not in dropped]
    for name, value in transform.set:
        headers = [(n, v) for n, v in headers if n != name] + [(name, value)]
    headers += list(transform.add)
    if policies.backend_key is not None:
        headers.append(("authorization", f"Bearer {policies.backend_key.value}"))
    return headers
