"""
Usage read from a body too large to keep whole (L{BodyEnds}: its first and
last bytes). OpenAI writes C{usage} as the last field of a chat completion,
an embeddings list and a Responses object, so the tail holds it; the model
is near the head (or, in an embeddings list, just before the usage).

No JSON string can hold the bytes C{"usage"} followed by C{:}: a C{"}
inside a string is always escaped, so those bytes are an object key (one
named C{usage}, unless a backslash escapes its first quote: checked). The
key's value is decoded on its own, and how many containers close after it
says how deep it was, so a C{usage} nested in some other field is not taken
for the body's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from agw.metering._usage import TokenUsage

HEAD = 64 * 1024
TAIL = 256 * 1024

_USAGE_KEY = re.compile(r'"usage"\s*:\s*')
_MODEL_KEY = re.compile(r'"model"\s*:\s*"([^"\\]*)"')
# Strings are matched whole so that brackets inside them do not count.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_DECODER = json.JSONDecoder()
# Keys tried, from the last: each costs a pass over the tail, and the
# body's own usage comes after all but a few fields.
_CANDIDATES = 32


class BodyEnds:
    """The first C{head} and the last C{tail} bytes of a body fed in pieces; memory stays bounded by their sum."""

    def __init__(self, head: int = HEAD, tail: int = TAIL) -> None:
        self._head_size, self._tail_size = head, tail
        self._head = bytearray()
        self._tail = bytearray()

    def feed(self, data: bytes) -> None:
        """The next piece of the body."""
        if len(self._head) < self._head_size:
            self._head += data[: self._head_size - len(self._head)]
        if len(data) >= self._tail_size:
            self._tail = bytearray(data[-self._tail_size:])
        else:
            self._tail += data
            if len(self._tail) > 2 * self._tail_size:  # trimmed now and then: amortised linear
                del self._tail[: len(self._tail) - self._tail_size]

    @property
    def head(self) -> str:
        """The head, decoded (a character cut in two at its end is replaced)."""
        return self._head.decode("utf-8", "replace")

    @property
    def tail(self) -> str:
        """The tail, decoded (a character cut in two at its start is replaced)."""
        return self._tail[-self._tail_size:].decode("utf-8", "replace")


def _depth_after(text: str, position: int) -> int:
    """How many containers close from C{position} (a place outside any string) to the end of C{text}."""
    depth = 0
    for token in _STRUCTURE.finditer(text, position):
        bracket = token.group()
        if bracket in "{[":
            depth -= 1
        elif bracket in "}]":
            depth += 1
    return depth


def _escaped(text: str, quote: int) -> bool:
    """Whether the C{"} at C{quote} is escaped (an odd run of backslashes before it): then it is inside a string."""
    run = 0
    while quote - run - 1 >= 0 and text[quote - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def usage_in_tail(
    tail: str, extract: Callable[[dict[str, Any]], TokenUsage | None], depths: tuple[int, ...] = (1,),
) -> TokenUsage | None:
    """
    The usage of the last C{"usage"} key in C{tail} whose value is an
    object, at one of C{depths} (1: a field of the body itself; 2: of an
    object in it, as a streamed C{response.completed}'s C{response}),
    built by C{extract} from C{{"usage": value}}; C{None} if there is none.
    """
    for key in reversed(list(_USAGE_KEY.finditer(tail))[-_CANDIDATES:]):
        if _escaped(tail, key.start()):
            continue
        try:
            value, end = _DECODER.raw_decode(tail, key.end())
        except ValueError:
            continue
        if isinstance(value, dict) and _depth_after(tail, end) in depths:
            return extract({"usage": value})
    return None


def model_in(ends: BodyEnds, top_level: bool = True) -> str | None:
    """
    The first C{"model"} of the head; else (embeddings lists name it after
    their data) the last one of the tail that is a field of the body itself
    (with C{top_level}).
    """
    head = ends.head
    for key in _MODEL_KEY.finditer(head):
        if not _escaped(head, key.start()):
            return key.group(1) or None
    if not top_level:
        return None
    tail = ends.tail
    for key in reversed(list(_MODEL_KEY.finditer(tail))[-_CANDIDATES:]):
        if key.group(1) and not _escaped(tail, key.start()) and _depth_after(tail, key.end()) == 1:
            return key.group(1)
    return None
