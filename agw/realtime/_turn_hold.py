"""
L{TurnHold}: agw's C{promptGuard.holdForTranscript}. With server VAD the
provider answers the user's audio before its transcript is known; held,
the client gets nothing of that answer (text or audio) until the
transcript has passed the request guards, and nothing at all if it does
not. The cost is the transcript's delay on every turn; a transcript that
never comes releases the answer after the hold's time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agw.realtime._ordered import Messages


class TurnHold:
    """The responses held for their turn's transcript, and the turns whose transcript is not checked yet."""

    def __init__(self, seconds: float, clock: Any, expired: Callable[[str, Messages], None]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._expired = expired
        self._unchecked: set[str] = set()
        self.held: dict[str, list[tuple[bytes, bool]]] = {}
        self._timers: dict[str, Any] = {}

    def committed(self, item_id: str) -> None:
        """The user's audio became C{item_id}: its transcript is awaited."""
        if self.seconds > 0:
            self._unchecked.add(item_id)

    def checked(self, item_id: str | None) -> None:
        self._unchecked.discard(item_id)  # type: ignore[arg-type]

    def awaits(self, item_id: str) -> bool:
        """Whether a response to C{item_id}'s turn is to be held."""
        return item_id in self._unchecked

    def hold(self, response_id: str, payload: bytes) -> None:
        """Hold C{response_id}, starting with its C{response.created}."""
        self.held[response_id] = [(payload, False)]
        self._timers[response_id] = self._clock.callLater(self.seconds, self._expire, response_id)

    def add(self, response_id: str | None, payload: bytes, is_binary: bool) -> bool:
        """Hold this message if it belongs to a held response."""
        messages = self.held.get(response_id) if response_id is not None else None
        if messages is None:
            return False
        messages.append((payload, is_binary))
        return True

    def take(self, response_id: str) -> Messages:
        """Stop holding C{response_id}: its messages so far, in order."""
        timer = self._timers.pop(response_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        return self.held.pop(response_id, [])

    def _expire(self, response_id: str) -> None:
        self._timers.pop(response_id, None)
        self._expired(response_id, self.held.pop(response_id, []))

    def stop(self) -> None:
        """The session ended: nothing more is released."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.held.clear()
