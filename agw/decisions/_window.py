"""
Regex response guards over a stream of text deltas (an SSE answer, a
Realtime response's text or audio transcript). Text at the end that may
be the start of a match (a partial match, or a whole one that may still
grow: the C{regex} module finds them) is held back, at most the newest
C{hold} characters, so a match split across deltas is never released in
part. Matches before that are masked (or block the stream) and the text up
to them is released at once. agentgateway evaluates windows of 1 KiB with
a 256-byte overlap and cannot mask; this releases text sooner and masks
what it finds.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agw.config import Guard, GuardAction, RegexRule, Rejection
from agw.decisions._apply import ALLOW, MASK, REJECT
from agw.decisions._recognizers import PATTERN_TOKEN, RECOGNIZERS

_RANK = {ALLOW: 0, MASK: 1, REJECT: 2}


def _rule_parts(rule: RegexRule) -> tuple[re.Pattern[str], str, Callable[[str], bool] | None]:
    if rule.builtin is not None:
        recognizer = RECOGNIZERS[rule.builtin]
        return recognizer.pattern, recognizer.token, recognizer.check
    assert rule.pattern is not None
    return rule.pattern, PATTERN_TOKEN, None


def growing_from(rule: RegexRule, text: str) -> int | None:
    """
    Where a match of C{rule} that the next text may extend begins (a
    partial match at the end, or a whole one that reaches it); C{None} if
    none may; C{-1} if the pattern has no partial form (hold all one may).
    """
    partial = RECOGNIZERS[rule.builtin].partial if rule.builtin is not None else rule.partial
    if partial is None:
        return -1
    end = len(text)
    for match in partial.finditer(text, partial=True):
        if match.partial or (match.end() == end and match.end() > match.start()):
            return match.start()  # type: ignore[no-any-return]
    return None


def mask_before(rule: RegexRule, text: str, limit: int) -> tuple[str, int, int]:
    """
    C{text} with C{rule}'s matches that end by C{limit} replaced by its
    token; C{limit} moved back to the start of a match that reaches past
    it (and shifted by the replacements); and how many were replaced.
    """
    pattern, token, accept = _rule_parts(rule)
    out: list[str] = []
    position = found = 0
    for match in pattern.finditer(text):
        if match.end() > limit:
            limit = min(limit, match.start())  # it may still grow: it and what follows wait
            break
        if match.end() == match.start() or (accept is not None and not accept(match.group(0))):
            continue
        out.append(text[position:match.start()])
        out.append(token)
        position = match.end()
        found += 1
    if not found:
        return text, limit, 0
    out.append(text[position:])
    masked = "".join(out)
    return masked, limit + len(masked) - len(text), found


class TextStream:
    """
    One stream's text through the regex response guards. L{feed} each
    delta and send what it returns; L{finish} at the stream's end. Once a
    guard rejects, C{rejection} is set and nothing more is released.
    """

    def __init__(self, guards: tuple[Guard, ...], hold: int) -> None:
        self._guards = [(index, guard) for index, guard in enumerate(guards) if guard.regex is not None]
        self._hold = hold
        self._pending = ""
        self.rejection: Rejection | None = None
        # Per guard (its index in promptGuard.response): the strongest action it took on this stream.
        self.actions: dict[int, str] = {index: ALLOW for index, _ in self._guards}

    @property
    def pending(self) -> str:
        """Text received and not released yet."""
        return self._pending

    def feed(self, delta: str) -> str:
        """Add C{delta}; the text that may be released now ("" if none, or if the stream is blocked)."""
        if self.rejection is not None:
            return ""
        self._pending += delta
        return self._release(final=False)

    def finish(self) -> str:
        """The stream ended: the rest of its text, guarded ("" if blocked)."""
        if self.rejection is not None:
            return ""
        return self._release(final=True)

    def _note(self, index: int, action: str) -> None:
        if _RANK[action] > _RANK[self.actions[index]]:
            self.actions[index] = action

    def _held_from(self, text: str) -> int:
        """Where the text that may be part of a match still growing begins (at most C{hold} from the end)."""
        limit = len(text)
        for _, guard in self._guards:
            assert guard.regex is not None
            for rule in guard.regex.rules:
                start = growing_from(rule, text)
                if start is not None:
                    limit = min(limit, start if start >= 0 else 0)
        return max(limit, len(text) - self._hold)

    def _release(self, final: bool) -> str:
        text = self._pending
        limit = len(text) if final else self._held_from(text)
        for index, guard in self._guards:
            regex = guard.regex
            assert regex is not None
            for rule in regex.rules:
                text, limit, found = mask_before(rule, text, limit)
                if not found:
                    continue
                if regex.action is GuardAction.REJECT:
                    self._note(index, REJECT)
                    self.rejection = guard.rejection
                    self._pending = ""
                    return ""
                self._note(index, MASK)
        released, self._pending = text[:limit], text[limit:]
        return released


def guard_text(guards: tuple[Guard, ...], text: str) -> tuple[str, Rejection | None, dict[int, str]]:
    """A whole text through the regex response guards: (masked text, the rejection if one rejected, each guard's action)."""
    stream = TextStream(guards, 0)
    stream._pending = text
    released = stream._release(final=True)
    return released, stream.rejection, stream.actions
