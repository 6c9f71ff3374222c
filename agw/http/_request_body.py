"""
Request bodies: a JSON body read as one object, with no key twice
(L{json_object}); a body already in memory as the upstream client's body
producer (L{BytesBodyProducer}); and L{Refused}, the gateway's own answer
to a request it will not forward.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


class Refused(Exception):
    """The client's request is answered by the gateway itself (an OpenAI-shaped error)."""

    def __init__(self, status: int, message: str, code: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(status, message)
        self.status, self.message, self.code, self.error_type = status, message, code, error_type

    @classmethod
    def too_large(cls, limit: int) -> Refused:
        """A body over C{limit} bytes: 413."""
        return cls(413, f"request body is larger than {limit} bytes", "request_too_large")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


# One decoder for every body (json.loads with a hook builds a new one on each call); it keeps no state.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def json_object(raw: bytes) -> dict[str, Any]:
    """
    C{raw} as a JSON object. L{Refused} (400) if it is not one, or if any
    object in it has a key twice: agw would read the last, the provider
    may read the first, and a check on one (the model) must hold for what
    the provider reads.
    """
    try:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            body = json.loads(raw, object_pairs_hook=_unique)  # UTF-16 or -32, as json.loads detects them
        else:
            body = _DECODER.decode(text)
    except _DuplicateKey as duplicate:
        key = duplicate.key if len(duplicate.key) <= 64 else duplicate.key[:64] + "..."
        raise Refused(
            400, f"request body has a duplicate key {key!r}: each key may appear once in an object", "duplicate_json_key",
        ) from None
    except (ValueError, RecursionError):  # nested deeper than the decoder goes: not a body agw can read
        body = None
    if not isinstance(body, dict):
        raise Refused(400, "request body must be a JSON object", "invalid_json")
    return body


@implementer(IBodyProducer)
class BytesBodyProducer:
    """
    Writes C{data} in one go when asked to produce. A JSON body the gateway
    has read (and perhaps rewritten) is at most C{max_json_body} bytes and
    in memory already; C{FileBodyProducer} would spend a cooperator turn
    and a second write on it, on every request.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: the body was written whole."""

    def resumeProducing(self) -> None:
        """Nothing to resume: the body was written whole."""

    def stopProducing(self) -> None:
        """Nothing to stop: the body was written whole."""
