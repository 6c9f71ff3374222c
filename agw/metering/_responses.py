"""
The responses of one Realtime session on their way (L{ResponseQueue}):
asked for and not yet acknowledged by the provider, then under way until
their usage comes; each holds what governance admitted it with (a
L{Reservation}) and when it began (for its span).
"""

from __future__ import annotations

from attrs import define

from agw.metering._reservation import NO_RESERVATION, Reservation


@define
class _Response:
    """One response: the client's C{event_id} or the provider's C{response_id}, its hold, when it began."""

    identifier: str | None
    reservation: Reservation
    began: float


class ResponseQueue:
    """
    Requests and responses in the order the provider answers them: a
    response it starts answers the oldest request, or none (server VAD).
    """

    def __init__(self) -> None:
        self._requested: list[_Response] = []  # by the client's event_id, oldest first
        self._running: list[_Response] = []  # by response_id (None: the provider gave none), oldest first
        # In-flight response ids, oldest first (for response.cancel).
        self.in_flight: dict[str, None] = {}
        # Admitted (see RealtimeSession.refusal), not yet asked for or dropped.
        self._admitted: Reservation = NO_RESERVATION

    @property
    def requested(self) -> int:
        """Requests forwarded and not acknowledged yet."""
        return len(self._requested)

    @property
    def running(self) -> int:
        return len(self._running)

    def admitted(self, reservation: Reservation) -> None:
        """The next request may start, holding C{reservation}."""
        self._admitted.release()  # admitted before and never asked for
        self._admitted = reservation

    def take_admitted(self) -> Reservation:
        admitted, self._admitted = self._admitted, NO_RESERVATION
        return admitted

    def asked(self, event_id: str | None, now: float) -> None:
        """The admitted request was forwarded."""
        self._requested.append(_Response(event_id, self.take_admitted(), now))

    def failed(self, event_id: str) -> bool:
        """The provider refused request C{event_id}: it never runs (C{False}: no such request waits)."""
        for index, request in enumerate(self._requested):
            if request.identifier == event_id:
                del self._requested[index]
                request.reservation.release()
                return True
        return False

    def started(self, response_id: str | None, now: float, unasked: Reservation | None = None) -> None:
        """
        A response began: it answers the oldest request, or, when none
        waits, it is the server's own and holds C{unasked}.
        """
        if self._requested:
            response = self._requested.pop(0)
            response.identifier = response_id
        else:
            response = _Response(response_id, unasked if unasked is not None else NO_RESERVATION, now)
        self._running.append(response)
        if response_id is not None:
            self.in_flight[response_id] = None

    def finished(self, response_id: str | None, now: float) -> tuple[Reservation, float]:
        """Response C{response_id} ended: what it held, and when it began (C{now} if it is not known)."""
        if response_id is not None:
            self.in_flight.pop(response_id, None)
        for index, response in enumerate(self._running):
            if response.identifier == response_id:
                del self._running[index]
                return response.reservation, response.began
        return NO_RESERVATION, now

    def release_all(self) -> None:
        """The session is over: responses that never reported usage hold nothing any more."""
        for response in self._requested + self._running:
            response.reservation.release()
        self.take_admitted().release()
