"""
Client keys (agentgateway's C{apiKey} policy): who is calling, and may they
use this model. Checked before anything goes upstream; the client's key is
never forwarded (it is agw's, not the provider's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from urllib.parse import parse_qsl

from attrs import frozen

from agw.config import APIKeyMode, APIKeyPolicy, ClientKey, KeyLocation

REALTIME_KEY_PROTOCOL = "openai-insecure-api-key."


@frozen
class KeyRefused(Exception):
    """The request is refused: C{status} (401, 403, 429 or 503), with an OpenAI-shaped C{message} and C{code}."""

    status: int
    message: str
    code: str

    @property
    def error_type(self) -> str:
        """OpenAI's C{error.type} for it: C{requests} for a rate limit (429), C{server_error} for 503."""
        return {429: "requests", 503: "server_error"}.get(self.status, "invalid_request_error")


def presented_key(
    location: KeyLocation | None, header: Callable[[str], str | None], query: str = "", protocols: tuple[str, ...] = (),
) -> str | None:
    """
    The key a client presents where the route's C{apiKey.location} says
    (C{None}: agentgateway's default, C{Authorization: Bearer <key>}):
    C{header} gives a request header's value by lower-case name; in
    C{query}, the first parameter of that exact name, decoded, as
    agentgateway reads it. Browser Realtime clients, which can set no
    header, present it as the subprotocol C{openai-insecure-api-key.<key>}
    (in C{protocols}), wherever the location is.
    """
    found: str | None = None
    if location is None:
        scheme, _, token = (header("authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            found = token
    elif location.header is not None:
        value = (header(location.header) or "").strip()
        if value[:len(location.prefix)].lower() == location.prefix.lower():
            found = value[len(location.prefix):]
    elif location.query is not None:
        found = next((value for name, value in parse_qsl(query, keep_blank_values=True) if name == location.query), None)
    if found is not None and found.strip():
        return found.strip()
    for protocol in protocols:
        if protocol.startswith(REALTIME_KEY_PROTOCOL) and len(protocol) > len(REALTIME_KEY_PROTOCOL):
            return protocol[len(REALTIME_KEY_PROTOCOL):]
    return None


def model_matches(pattern: str, model: str) -> bool:
    """C{pattern} is an exact model name, or has one C{*} standing for any text (C{gpt-realtime*})."""
    if "*" not in pattern:
        return model == pattern
    prefix, _, suffix = pattern.partition("*")
    return len(model) >= len(prefix) + len(suffix) and model.startswith(prefix) and model.endswith(suffix)


class KeyCheck:
    """
    A route's C{apiKey} policy at run time. Keys are looked up by their
    SHA-256 digest, as agentgateway does: the digest of a wrong key says
    nothing about a right one, so the lookup's timing cannot be used to
    guess keys, and no plaintext key is kept.
    """

    def __init__(self, policy: APIKeyPolicy) -> None:
        self.mode = policy.mode
        self.location = policy.location  # where the key is read (None: Authorization: Bearer)
        self._by_digest = {key.digest: key for key in policy.keys}

    def authenticate(self, presented: str | None) -> ClientKey | None:
        """The caller's key (C{None}: anonymous, as the mode allows); raises L{KeyRefused} (401)."""
        if presented is None:
            if self.mode is APIKeyMode.STRICT:
                raise KeyRefused(401, "no API Key found", "missing_api_key")
            return None
        key = self._by_digest.get(hashlib.sha256(presented.encode("utf-8")).hexdigest())
        if key is None and self.mode is not APIKeyMode.PERMISSIVE:
            raise KeyRefused(401, "invalid credentials", "invalid_api_key")
        return key

    def known(self, digest: str) -> ClientKey | None:
        """The key with SHA-256 C{digest} (hex), if this policy has it (the key that minted an agw token)."""
        return self._by_digest.get(digest)

    @staticmethod
    def authorize(key: ClientKey | None, model: str | None) -> None:
        """Raise L{KeyRefused} (403) if C{key} may not use C{model} (exact names, or one C{*})."""
        if key is None or not key.allowed_models:
            return
        if model is not None and any(model_matches(pattern, model) for pattern in key.allowed_models):
            return
        raise KeyRefused(403, f"model {model!r} is not allowed for this API key", "model_not_allowed")

    @staticmethod
    def authorize_unread(key: ClientKey | None) -> None:
        """
        Raise L{KeyRefused} (403) if C{key} has allowed models or budgets and
        the request would be forwarded unread (passthrough), where agw can
        neither check the model nor count the tokens; unless the operator
        allows it (C{allowPassthrough}).
        """
        if key is None or not key.restricted or key.allow_passthrough:
            return
        raise KeyRefused(
            403,
            "this API key has model restrictions or budgets, and this path is forwarded unread (passthrough): "
            "agw could neither check its model nor count its tokens",
            "passthrough_not_allowed",
        )
