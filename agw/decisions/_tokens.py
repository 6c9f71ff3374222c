"""
agw's own client secrets. C{POST /v1/realtime/client_secrets} through agw
mints the provider's ephemeral key with the backend key and gives the client
an opaque token of agw's instead (L{CallTokens}): the provider's key never
leaves the gateway, so every call opened with it goes through agw (and is
supervised), and the token is a client key on the route's Realtime
WebSocket too, bound to the consumer that minted it and the model it pinned.

Tokens live in the memory of the process that minted them (a restart
forgets them; see docs/webrtc.md) and are kept by their SHA-256 digest, as
client keys are.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from attrs import field, frozen

from agw.config import Secret
from agw.decisions._keys import KeyRefused

TOKEN_PREFIX = "agw_ek_"
# How many live tokens one process keeps; a client minting past it is refused (503) until some expire.
MAX_TOKENS = 100_000
# Expired tokens are dropped at the next mint this long after the last sweep.
SWEEP_INTERVAL = 60.0


def is_token(presented: str | None) -> bool:
    """Whether a presented credential is one of agw's tokens (not a client key)."""
    return presented is not None and presented.startswith(TOKEN_PREFIX)


@frozen
class Grant:
    """
    What one token stands for: the route that minted it (its labels), the
    client key of its consumer (its digest; C{None}: anonymous), the model
    it pinned, the provider's secret behind it and when both expire (Unix
    time).
    """

    route: tuple[str, ...]
    key_digest: str | None = field(repr=False)
    model: str
    provider_secret: Secret
    expires_at: float


class CallTokens:
    """The tokens a gateway process minted, by digest; C{clock} gives Unix time."""

    def __init__(self, clock: Callable[[], float], limit: int = MAX_TOKENS) -> None:
        self.clock = clock
        self._limit = limit
        self._grants: dict[str, Grant] = {}
        self._swept_at = 0.0

    def __len__(self) -> int:
        return len(self._grants)

    def mint(self, grant: Grant) -> str:
        """A new token for C{grant}; raises L{KeyRefused} (503) when this process holds too many."""
        now = self.clock()
        if now - self._swept_at >= SWEEP_INTERVAL or len(self._grants) >= self._limit:
            self._swept_at = now
            self._grants = {digest: kept for digest, kept in self._grants.items() if kept.expires_at > now}
        if len(self._grants) >= self._limit:
            raise KeyRefused(503, "the gateway holds too many live client secrets; try again shortly", "too_many_client_secrets")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._grants[_digest(token)] = grant
        return token

    def redeem(self, token: str, route: tuple[str, ...]) -> Grant:
        """
        The L{Grant} of C{token} presented on C{route}; raises L{KeyRefused}
        (401) for a token this process did not mint, one minted on another
        route, or one past its expiry.
        """
        grant = self._grants.get(_digest(token))
        if grant is None or grant.route != route:
            raise KeyRefused(401, "invalid credentials", "invalid_api_key")
        if grant.expires_at <= self.clock():
            del self._grants[_digest(token)]
            raise KeyRefused(401, "this client secret has expired: mint another", "expired_client_secret")
        return grant


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
