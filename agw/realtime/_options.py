"""
The Realtime relay's limits and timeouts (L{RelayOptions}), and the count
of sessions a bind serves at once (L{SessionSlots}).
"""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import in_

from agw.config import MiB

# RelayOptions.client_deflate: what agw does with a client's permessage-deflate
# offer (agw.realtime._deflate has what each means).
CLIENT_DEFLATE = ("off", "small", "accept")


@frozen
class RelayOptions:
    """Limits and timeouts of the Realtime relay."""

    max_message_size: int = 16 * MiB
    handshake_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 1.0
    # How long a response the client abandoned may take to report its usage.
    cancel_grace: float = 5.0
    # How often open sessions add their message and byte counts to the metrics.
    counter_flush_interval: float = 1.0
    # Bytes that may wait to be sent to one peer before reading from the
    # other pauses (flow control), per leg.
    write_buffer_size: int = 256 * 1024
    # Fragments one message may have (then close 1009).
    max_fragments: int = 1024
    # Sessions (handshakes included) one bind serves at once; more: 503.
    max_sessions: int = 10_000
    # Forward data frames as they came (False: unmask, validate and re-frame every message, as before).
    pass_through: bool = True
    # A client's permessage-deflate offer: "off" (declined: a compressing client costs about 3.5x the CPU per
    # audio append), "small" (accepted with small windows and no context kept between messages: no zlib state
    # while a session is idle), "accept" (as offered: about 100 KiB more per session).
    client_deflate: str = field(default="off", validator=in_(CLIENT_DEFLATE))


class SessionSlots:
    """The Realtime sessions of one bind, counted against C{limit} (shared by its routes' relays)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: set[object] = set()

    def __len__(self) -> int:
        return len(self._held)

    def acquire(self, holder: object) -> bool:
        """Take a slot for C{holder}; C{False} when all are taken."""
        if len(self._held) >= self.limit:
            return False
        self._held.add(holder)
        return True

    def release(self, holder: object) -> None:
        """Give C{holder}'s slot back (if it has one)."""
        self._held.discard(holder)
