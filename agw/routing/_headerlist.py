"""
Headers as a list of C{(name, value)} byte pairs, names lower-cased: what
agw's own HTTP/1.1 protocols (the front door, the upstream client) keep
instead of twisted.web's C{Headers}, which canonicalises and encodes every
name it is given. L{HeaderList} answers the part of C{Headers}' API that
the forwarding core uses, so one core serves both twisted.web's requests
and agw's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class HeaderList:
    """An ordered multi-map of header names (lower-cased bytes) to raw values; a C{Headers} stand-in."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = ()) -> None:
        # Names as written to or read from the wire, lower-cased once on the way in.
        self.pairs: list[tuple[bytes, bytes]] = list(pairs)

    def __repr__(self) -> str:
        return f"HeaderList({[name for name, _ in self.pairs]!r})"

    def __len__(self) -> int:
        return len(self.pairs)

    def hasHeader(self, name: bytes | str) -> bool:  # noqa: N802 (Headers' API)
        key = _key(name)
        return any(have == key for have, _ in self.pairs)

    def getRawHeaders(self, name: bytes | str, default: list[bytes] | None = None) -> list[bytes] | None:  # noqa: N802
        key = _key(name)
        values = [value for have, value in self.pairs if have == key]
        return values or default

    def get(self, name: bytes) -> bytes | None:
        """The first value of C{name} (lower-case), or C{None}."""
        for have, value in self.pairs:
            if have == name:
                return value
        return None

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:  # noqa: N802
        """Each name once, with its values in order (as C{Headers} gives them)."""
        grouped: dict[bytes, list[bytes]] = {}
        for name, value in self.pairs:
            grouped.setdefault(name, []).append(value)
        return iter(grouped.items())

    def addRawHeader(self, name: bytes | str, value: bytes | str) -> None:  # noqa: N802
        self.pairs.append((_key(name), value if isinstance(value, bytes) else value.encode("latin-1")))

    def setRawHeaders(self, name: bytes | str, values: list[bytes] | list[str]) -> None:  # noqa: N802
        key = _key(name)
        self.pairs = [pair for pair in self.pairs if pair[0] != key]
        self.pairs.extend((key, value if isinstance(value, bytes) else value.encode("latin-1")) for value in values)

    def removeHeader(self, name: bytes | str) -> None:  # noqa: N802
        key = _key(name)
        self.pairs = [pair for pair in self.pairs if pair[0] != key]


def text_pairs(headers: HeaderList | Any) -> list[tuple[str, str]]:
    """
    C{headers} as (lower-case name, value) text pairs: a L{HeaderList}'s in
    the order they came, twisted.web's C{Headers} by name.
    """
    if isinstance(headers, HeaderList):
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.pairs]
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, values in headers.getAllRawHeaders()
        for value in values
    ]


def byte_pairs(headers: HeaderList | Any) -> list[tuple[bytes, bytes]]:
    """C{headers} as (lower-case name, value) byte pairs: a L{HeaderList}'s own list (not to be changed), or C{Headers}' by name."""
    if isinstance(headers, HeaderList):
        return headers.pairs
    return [(name.lower(), value) for name, values in headers.getAllRawHeaders() for value in values]


def _key(name: bytes | str) -> bytes:
    return (name if isinstance(name, bytes) else name.encode("latin-1")).lower()
