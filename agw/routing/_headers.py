"""
What the gateway sends upstream of a client's headers, and back of the
provider's: hop-by-hop headers out (those RFC 9110 names and those the
sender lists in C{Connection}), client credentials and billing selectors
out when the gateway holds the backend key, the route's transformations
applied, the backend key in, C{X-Forwarded-For} set from the connection.
docs/security.md lists all of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from agw.config import Policies

# RFC 9110 hop-by-hop headers and framing the gateway recomputes.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# Where clients put an OpenAI or Azure key: agw's when the route has an
# apiKey policy or a backend key (see agw_credentials), never forwarded then.
KEY_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
KEY_PARAMETERS = frozenset({"api-key", "key"})
# What a client could use to spend as someone else, or to choose who pays,
# when the gateway's key is the one that pays: never forwarded with it.
CREDENTIALS = KEY_HEADERS | frozenset({"openai-organization", "openai-project", "cookie"})
# Query separators: "&", and ";" which some servers also split on.
_QUERY_SEPARATOR = re.compile(r"([&;])")


def agw_credentials(policies: Policies) -> bool:
    """Whether a client's credentials are agw's on this route (an apiKey policy or a backend key), not the provider's."""
    return policies.api_key is not None or policies.backend_key is not None


def key_header_names(policies: Policies) -> frozenset[str]:
    """The headers a client key can come in on this route: L{KEY_HEADERS} and the C{apiKey.location} header."""
    location = policies.api_key.location if policies.api_key is not None else None
    return KEY_HEADERS | ({location.header} if location is not None and location.header else set())


def forwarded_query(query: str, agws: bool, parameter: str | None = None) -> str:
    """
    C{query} as it goes upstream: as it came, unless the credentials are
    agw's (C{agws}, see L{agw_credentials}); then without a C{api-key} or
    C{key} parameter (nor C{parameter}, C{apiKey.location}'s), whatever the
    case of its name or how it is percent-encoded. Separators and the other
    parameters stay byte for byte.
    """
    if not agws or not query:
        return query
    dropped = KEY_PARAMETERS | ({parameter.lower()} if parameter else set())
    parts = _QUERY_SEPARATOR.split(query)  # part, separator, part, ...
    kept: list[str] = []
    for index in range(0, len(parts), 2):
        if unquote_plus(parts[index].partition("=")[0]).strip().lower() in dropped:
            continue
        if kept:
            kept.append(parts[index - 1])  # the separator that came before this part
        kept.append(parts[index])
    return "".join(kept)
# Client claims about the path to the gateway: not trusted, X-Forwarded-For is set anew.
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"})


def _listed(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names listed in C{Connection} (RFC 9110 7.6.1): hop-by-hop too."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(listed)


def _latin1(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs)


class RequestHeaderPolicy:
    """
    What L{upstream_headers} does to a client's headers on one route, made
    once from its policies: the names dropped whatever the request (the
    hop-by-hop ones, the client's forwarding claims, C{also_drop}, the
    route's C{remove}, client credentials where agw's key pays), the route's
    C{set} and C{add}, the backend key. L{apply} works on lower-case byte
    pairs, as agw's own HTTP/1.1 protocols hold them.
    """

    __slots__ = ("_dropped", "_set", "_add", "_key")

    def __init__(
        self, policies: Policies, also_drop: Iterable[str] = (), key_header: tuple[str, str] = ("authorization", "Bearer "),
    ) -> None:
        transform = policies.request_headers
        dropped = HOP_BY_HOP | FORWARDING | set(also_drop) | set(transform.remove)
        if policies.backend_key is not None:
            dropped |= CREDENTIALS
        if agw_credentials(policies):
            dropped |= key_header_names(policies)  # the client's key is agw's, not the provider's
        self._dropped = frozenset(name.encode("latin-1") for name in dropped)
        self._set, self._add = _latin1(transform.set), list(_latin1(transform.add))
        backend = policies.backend_key
        self._key = _latin1([(key_header[0], key_header[1] + backend.value)])[0] if backend is not None else None

    def apply(self, client_headers: list[tuple[bytes, bytes]], client_address: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """The headers that go upstream of C{client_headers} (lower-case names), C{X-Forwarded-For} C{client_address}."""
        dropped = self._dropped
        listed = _listed(client_headers)
        if listed:
            dropped = dropped | listed
        headers = [pair for pair in client_headers if pair[0] not in dropped]
        for name, value in self._set:
            headers = [pair for pair in headers if pair[0] != name] + [(name, value)]
        headers += self._add
        if client_address is not None:
            headers.append((b"x-forwarded-for", client_address))
        if self._key is not None:
            name = self._key[0]
            headers = [pair for pair in headers if pair[0] != name]  # a transformation never doubles the key's header
            headers.append(self._key)
        return headers


def upstream_headers(
    client_headers: Iterable[tuple[str, str]], policies: Policies, also_drop: Iterable[str] = (),
    client_address: str | None = None, key_header: tuple[str, str] = ("authorization", "Bearer "),
) -> list[tuple[str, str]]:
    """
    The client's headers (lower-case names) minus hop-by-hop headers,
    C{also_drop} and the route's C{remove} list, with C{set}/C{add} applied.
    With a backend key, client credentials are replaced by the key in
    C{key_header} (name, prefix: C{Authorization: Bearer <key>} by default,
    Azure's C{api-key: <key>}); without one they pass through.
    C{X-Forwarded-For} is C{client_address} (the TCP peer), whatever the
    client said. (L{RequestHeaderPolicy} as text.)
    """
    policy = RequestHeaderPolicy(policies, also_drop, key_header)
    address = client_address.encode("latin-1") if client_address is not None else None
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in policy.apply(list(_latin1(client_headers)), address)
    ]


def guard_headers(client_headers: Iterable[tuple[str, str]], policies: Policies) -> dict[str, str]:
    """
    The client's headers (lower-case names) a guard webhook may be sent,
    as name -> value (a repeated header's values joined with ", "); its
    C{forwardHeaderMatches} choose among them. With an C{apiKey} policy
    the client's key headers are agw's credential: never among them.
    """
    found: dict[str, str] = {}
    agws = key_header_names(policies) if policies.api_key is not None else frozenset()
    for name, value in client_headers:
        if name in agws:
            continue
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


# The gateway writes its own Date and Server; the provider's are dropped (as nginx's proxy_hide_header).
_GATEWAY_OWN = frozenset({"date", "server"})


_RESPONSE_DROPPED = frozenset(name.encode("ascii") for name in HOP_BY_HOP | _GATEWAY_OWN)


def response_header_pairs(upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    The provider's response headers (lower-case byte names) the client
    gets: all but hop-by-hop headers, those its C{Connection} lists, and
    its C{Date} and C{Server} (the gateway sends its own).
    """
    dropped = _RESPONSE_DROPPED
    listed = _listed(upstream)
    if listed:
        dropped = dropped | listed
    return [
        (name, value) for name, value in upstream
        # Twisted's gzip decoding leaves an empty Content-Encoding on an answer that had none.
        if name not in dropped and not (name == b"content-encoding" and not value.strip())
    ]
