"""
agw's own client secrets. C{POST /v1/realtime/client_secrets} through agw
mints the provider's ephemeral key with the backend key and gives the client
a token of agw's instead (L{CallTokens}): the provider's key never leaves
the gateway in the clear, so every call opened with it goes through agw
(and is supervised), and the token is a client key on the route's Realtime
WebSocket too, bound to the consumer that minted it and the model it pinned.

A token is sealed, not looked up: it carries its L{Grant} encrypted and
authenticated (AES-256-GCM) with the gateway's token key. Any process that
holds the key can redeem it — every worker of C{--workers N} gets the
pool's key — and nothing is kept per token. The client holds only
ciphertext: without the key it can neither read the provider's secret
inside nor forge or alter a grant. A new key (a gateway restart) makes every
earlier token invalid (see docs/webrtc.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable

from attrs import field, frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agw.config import Secret
from agw.decisions._keys import KeyRefused

TOKEN_PREFIX = "agw_ek_"
TOKEN_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # random per token: with 96-bit nonces one key may seal billions of tokens safely
# Bound to the format: a token of another format (or a value of another use) cannot pass for one.
_ASSOCIATED = b"agw_ek_v1"
# Longer is not a token of agw's (a grant is a few hundred bytes); not even decoded.
MAX_TOKEN_CHARS = 4096


def is_token(presented: str | None) -> bool:
    """Whether a presented credential is one of agw's tokens (not a client key)."""
    return presented is not None and presented.startswith(TOKEN_PREFIX)


def new_token_key() -> bytes:
    """A new random token key (a gateway's, or a worker pool's for all its workers)."""
    return os.urandom(TOKEN_KEY_BYTES)


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
    """
    Seals grants into tokens and opens them again, with C{key} (one per
    gateway: L{new_token_key} if none is given); C{clock} gives Unix time.
    """

    def __init__(self, clock: Callable[[], float], key: bytes | None = None) -> None:
        self.clock = clock
        key = key if key is not None else new_token_key()
        if len(key) != TOKEN_KEY_BYTES:
            raise ValueError(f"a token key has {TOKEN_KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def mint(self, grant: Grant) -> str:
        """A new token for C{grant}."""
        payload = json.dumps(
            [list(grant.route), grant.key_digest, grant.model, grant.provider_secret.value, grant.expires_at],
            separators=(",", ":"),
        ).encode("utf-8")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, _ASSOCIATED)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def redeem(self, token: str, route: tuple[str, ...]) -> Grant:
        """
        The L{Grant} of C{token} presented on C{route}; raises L{KeyRefused}
        (401) for a token not sealed with this key (or altered), one minted
        on another route, or one past its expiry.
        """
        grant = self._open(token)
        if grant is None or grant.route != route:
            raise KeyRefused(401, "invalid credentials", "invalid_api_key")
        if grant.expires_at <= self.clock():
            raise KeyRefused(401, "this client secret has expired: mint another", "expired_client_secret")
        return grant

    def _open(self, token: str) -> Grant | None:
        if not is_token(token) or len(token) > MAX_TOKEN_CHARS:
            return None
        text = token[len(TOKEN_PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _ASSOCIATED)
            route, key_digest, model, secret, expires_at = json.loads(payload)
        except (binascii.Error, ValueError, InvalidTag, TypeError):
            return None
        return Grant(tuple(route), key_digest, model, Secret(secret), float(expires_at))
