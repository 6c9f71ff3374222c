"""
L{OrderedDelivery}: one direction of a session, in order, past checks that
may answer later. A guard backend (a webhook, a moderation call) answers
after the messages behind the one it reads have arrived; those wait, so
the provider never sees a C{response.create} before the item it was meant
to answer, nor the client a delta before the text before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

# What a check makes of one message: the messages to deliver (none: dropped), now or later.
Messages = Sequence[tuple[bytes, bool]]
Check = Callable[[bytes, bool], "Messages | Deferred[Messages]"]


class OrderedDelivery:
    """Delivers each message C{check} lets through, in arrival order."""

    log = Logger()

    def __init__(self, check: Check, deliver: Callable[[bytes, bool], object]) -> None:
        self._check = check
        self._deliver = deliver
        self._waiting: deque[tuple[bytes, bool]] | None = None

    @property
    def holding(self) -> bool:
        """Whether a check is under way (every message that arrives now waits behind it)."""
        return self._waiting is not None

    @property
    def waiting(self) -> int:
        """How many messages wait behind the check under way."""
        return len(self._waiting) if self._waiting is not None else 0

    def submit(self, payload: bytes, is_binary: bool) -> None:
        """One message, as it arrived."""
        if self._waiting is not None:
            self._waiting.append((payload, is_binary))
            return
        result = self._check(payload, is_binary)
        if not isinstance(result, Deferred):
            for message in result:
                self._deliver(*message)
            return
        self._waiting = deque()
        result.addErrback(self._failed).addCallback(self._checked)

    def _failed(self, failure: Failure) -> Messages:
        # A check that fails (not a guard backend failing: that is its failureMode's business) drops its message.
        self.log.failure("a guard check failed; its message is dropped", failure)
        return ()

    def _checked(self, messages: Messages) -> None:
        waiting, self._waiting = self._waiting, None
        for message in messages:
            self._deliver(*message)
        while waiting:
            self.submit(*waiting.popleft())
            if self._waiting is not None:  # another check under way: the rest wait behind it
                self._waiting.extend(waiting)
                return
