"""
The client's request-target, checked and normalised once, so that the path
a route was chosen by is exactly the path that goes upstream.

Only origin-form targets (C{/path?query}) are accepted. A target in any
other form (C{http://host/x}, C{host:443}, C{*}, or C{.evil.example/x},
which a careless proxy glues onto its backend's host name) never reaches a
backend. The path is normalised as RFC 3986 section 6.2.2 describes, and a
little further so that no two spellings of one OpenAI endpoint are routed
differently: percent-encoded unreserved characters are decoded
(C{complet%69ons} is C{completions}), other escapes get upper-case hex,
repeated and trailing slashes go. Dot segments (C{..}, C{%2e%2e}) and
encoded slashes (C{%2F}, C{%5C}) are refused: a backend may resolve them
to another endpoint than the one the gateway routed.
"""

from __future__ import annotations

import re
import string

from attrs import frozen

# RFC 3986 unreserved characters: an escape of one of these means the same.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Characters a path may carry unescaped (pchar and "/"), besides "%".
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
# A query is passed on as it came; only what cannot be in a target at all is refused.
_BAD_QUERY = re.compile(r"[\x00-\x20\x7f-\xff#]")
_ESCAPE = re.compile(r"%(..)?")
_HEX = frozenset(string.hexdigits)
# Escapes that would change the path's structure for a backend that decodes them.
_STRUCTURAL = frozenset({"2F", "5C"})


class BadTarget(ValueError):
    """The request-target is refused; C{message} says why (no secrets in it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@frozen
class OriginTarget:
    """A normalised origin-form target: C{path} starts with C{/}; C{query} without its C{?}."""

    path: str
    query: str = ""

    @property
    def uri(self) -> bytes:
        """C{path?query} as it is forwarded."""
        return (self.path + ("?" + self.query if self.query else "")).encode("ascii")


def _normalise_escape(match: re.Match[str]) -> str:
    digits = match.group(1)
    if digits is None or not (digits[0] in _HEX and digits[1] in _HEX):
        raise BadTarget("malformed percent-encoding in the request path")
    digits = digits.upper()
    if digits in _STRUCTURAL:
        raise BadTarget("encoded slashes are not allowed in the request path")
    character = chr(int(digits, 16))
    return character if character in _UNRESERVED else "%" + digits


def normalise_path(raw: str) -> str:
    """
    C{raw} (starting with C{/}) normalised as the module docstring says;
    raises L{BadTarget}.
    """
    if not _PATH_CHARS.match(raw):
        raise BadTarget("the request path has characters that must be percent-encoded")
    path = _ESCAPE.sub(_normalise_escape, raw)
    segments = [segment for segment in path.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise BadTarget("dot segments are not allowed in the request path")
    return "/" + "/".join(segments)


def parse_target(raw: bytes) -> OriginTarget:
    """The L{OriginTarget} of a raw request-target; raises L{BadTarget}."""
    if not raw.startswith(b"/"):
        raise BadTarget("the request-target must be a path starting with '/' (origin-form)")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadTarget("the request-target must be ASCII (percent-encode other bytes)") from None
    path, _, query = text.partition("?")
    if _BAD_QUERY.search(query):
        raise BadTarget("the query has characters that must be percent-encoded")
    return OriginTarget(normalise_path(path), query)
