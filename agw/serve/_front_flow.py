"""
When a front-door connection reads from its client: L{ReadFlow}, reading
paused while any reason to pause holds (a pipelined request waits for the
one before it; a body waits for its upstream to take more).
"""

from __future__ import annotations

from typing import Any


class ReadFlow:
    """Pauses and resumes reading from C{transport}, for named reasons: it reads while none holds."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        """Stop reading for C{reason}."""
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        """C{reason} no longer holds; reading goes on when no other does."""
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._transport.resumeProducing()
