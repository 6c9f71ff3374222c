"""
L{SessionGuard}: C{promptGuard} and C{prompts} for one Realtime session,
both ways. Client events that carry text (typed items, instructions, a
response's own input) are checked before the provider sees them: masked
and forwarded, or refused in-protocol with the client's C{event_id}. The
user's audio is checked by its transcript: a block cancels the response of
that turn and deletes the item. The provider's text and audio transcript
deltas go through windowed response guards, per response: a block cancels
that response by its id, drops the rest of it, and its usage is still
metered. Only text-bearing events are parsed; audio passes as it came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from agw.config import FailureMode, Guard, Policies, Rejection
from agw.decisions import (
    GUARDED_CLIENT_EVENTS,
    INPUT_TRANSCRIPT,
    OUTPUT_DELTAS,
    OUTPUT_WHOLE,
    GuardOutcome,
    Slot,
    agw_event_id,
    client_event_slots,
    encode,
    enriched_instructions,
    guard_slots,
    guardrail_error,
    has_regex,
    rejection_text,
    response_of,
    transcript_slots,
)
from agw.metering import decode_event
from agw.realtime._ordered import Messages
from agw.realtime._output_guard import OutputGuard, Recorder
from agw.realtime._turn_hold import TurnHold

# Runs guards over slots (masking them in place): regex at once, guard backends later.
GuardRunner = Callable[[tuple[Guard, ...], list[Slot], str], "GuardOutcome | Deferred[GuardOutcome]"]


def regex_runner(guards: tuple[Guard, ...], slots: list[Slot], phase: str) -> GuardOutcome:
    """The runner without guard backends: regex guards only, at once."""
    return guard_slots(slots, guards)


class CheckedEvent(bytes):
    """A client event as agw encoded it once checked: its C{kind} is its only type (no need to look again)."""

    kind: str

    def __new__(cls, payload: bytes, kind: str) -> CheckedEvent:
        event = super().__new__(cls, payload)
        event.kind = kind
        return event


def refusal_event(outcome: GuardOutcome, **where: Any) -> bytes:
    """The client's error event for what a guard refused (or could not check: its backend failed closed)."""
    if outcome.unavailable:
        return guardrail_error("a guardrail could not be checked (its service is unavailable)", code="guardrail_unavailable", **where)
    return guardrail_error(rejection_text(outcome.rejection), **where)


class SessionGuard:
    """The guards of one session; the legs call L{check_client} and L{check_server} for each message they relay."""

    def __init__(self, policies: Policies, record: Recorder, runner: GuardRunner = regex_runner, clock: Any = None) -> None:
        guard = policies.prompt_guard
        self._request = guard.request
        # The provider's output is a stream: regex response guards read it when streaming is on (as agentgateway).
        self._response = guard.response if guard.streaming and has_regex(guard.response) else ()
        self._prompts = policies.prompts
        self._record = record
        self._runner = runner
        # An event agw cannot parse cannot be checked: refused unless every request guard fails open.
        self._refuse_unparseable = any(g.regex is not None or g.failure_mode is FailureMode.FAIL_CLOSED for g in self._request)
        self.output = OutputGuard(self._response, guard.hold_chars, record, self)
        self.turns = TurnHold(guard.hold_for_transcript if self._request else 0.0, clock, self._hold_expired)
        self._turn_item: str | None = None  # the input audio item last committed
        self._turn_of: dict[str, str] = {}  # response id -> the input item whose turn started it
        self._blocked_turns: dict[str, Rejection] = {}  # input items blocked before their turn's response began
        self._instructions_set = False  # the client sent instructions, or agw enriched them for it
        self.to_client: Callable[[bytes], object] = lambda payload: None
        self.to_provider: Callable[[bytes], object] = lambda payload: None

    def attach(self, to_client: Callable[[bytes], object], to_provider: Callable[[bytes], object]) -> None:
        """Where the guard's own events go once both legs are open."""
        self.to_client, self.to_provider = to_client, to_provider

    def reads_client_type(self, kind: str | None) -> bool:
        """Whether a client event of C{kind} (C{None}: unknown from its head) must be read whole."""
        return kind is None or kind in GUARDED_CLIENT_EVENTS

    def reads_server_type(self, kind: str | None) -> bool:
        """Whether a provider event of C{kind} must be read whole (an audio delta of a blocked response is found by id)."""
        if kind is None:
            return True
        if kind == "session.created":
            return bool(self._prompts.prepend or self._prompts.append)
        if kind in ("input_audio_buffer.committed", "response.created", INPUT_TRANSCRIPT):
            return bool(self._request)
        return bool(self._response) and (kind in OUTPUT_DELTAS or kind in OUTPUT_WHOLE)

    @property
    def blocked(self) -> bool:
        """Whether some responses' events are to be found by id (blocked, or held for a transcript)."""
        return bool(self.output.blocked or self.turns.held)

    def blocks_head(self, head: bytes) -> bool:
        """Whether a provider message whose first bytes are C{head} names a blocked response (its audio is dropped too)."""
        return any(response_id.encode() in head for response_id in (*self.output.blocked, *self.turns.held))

    # Client to provider.

    def check_client(self, payload: bytes, is_binary: bool) -> Messages | Deferred[Messages]:
        """A client message: forwarded as it came, rewritten (masked, enriched), or refused with an error event."""
        if is_binary:
            return [(payload, is_binary)]
        event = decode_event(payload)
        if event is None:
            if not self._refuse_unparseable:
                return [(payload, False)]
            self.to_client(guardrail_error("the event is not a JSON object, so the guardrails cannot check it", code="guardrail_unreadable"))
            return ()
        kind = event.get("type")
        if kind not in GUARDED_CLIENT_EVENTS:
            return [(payload, False)]
        if kind == "session.update":
            self._enrich(event.get("session"))
        outcome = self._runner(self._request, client_event_slots(event), "request")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None

        def decided(outcome: GuardOutcome) -> Messages:
            self._note(outcome, "request", {"realtime.event": kind, "realtime.event_id": event_id})
            if outcome.rejection is not None:
                self.to_client(refusal_event(outcome, event_id=event_id))
                return ()
            # Sent as agw read it: a key the client wrote twice reaches the provider once, as checked.
            return [(CheckedEvent(encode(event), kind), False)]

        return outcome.addCallback(decided) if isinstance(outcome, Deferred) else decided(outcome)

    def _enrich(self, session: Any) -> None:
        """C{prompts} around the instructions of the client's C{session.update} (if it sets them)."""
        if not isinstance(session, dict) or "instructions" not in session:
            return
        instructions = session.get("instructions")
        enriched = enriched_instructions(instructions if isinstance(instructions, str) else None, self._prompts)
        if enriched is not None:
            session["instructions"] = enriched
        self._instructions_set = True

    def _note(self, outcome: GuardOutcome, phase: str, where: dict[str, Any]) -> None:
        for check in outcome.checks:
            self._record(phase, check.index, check.action, where)

    # Provider to client.

    def check_server(self, payload: bytes, is_binary: bool) -> Messages | Deferred[Messages]:
        """A provider message: relayed, rewritten (masked text), held (part of a window), or dropped (blocked)."""
        if is_binary:
            return [(payload, is_binary)]
        event = decode_event(payload)
        if event is None:
            return [(payload, False)]
        kind = event.get("type")
        response_id = response_of(event)
        if response_id is not None and response_id in self.output.blocked:
            return self.output.blocked_event(kind, response_id, event, self._finish_response)
        if self.turns.add(response_id, payload, is_binary):
            return ()  # its turn's transcript is awaited
        if kind == "session.created":
            self._session_created(event)
        elif kind == "input_audio_buffer.committed":
            self._turn_item = event.get("item_id") if isinstance(event.get("item_id"), str) else None
            if self._turn_item is not None:
                self.turns.committed(self._turn_item)
        elif kind == "response.created" and response_id is not None and self._turn_item is not None:
            if self._turn_started(response_id, payload):
                return ()
        elif kind == INPUT_TRANSCRIPT and self._request:
            return self._check_transcript(event, payload)
        elif self._response and kind in OUTPUT_DELTAS:
            return self.output.delta(payload, event, response_id)
        elif self._response and kind in OUTPUT_WHOLE:
            return self.output.whole(payload, event, kind, response_id, self._finish_response)
        elif kind == "response.done" and response_id is not None:
            self._finish_response(response_id)
        return [(payload, False)]

    def _turn_started(self, response_id: str, payload: bytes) -> bool:
        """
        The response server VAD started for the last committed audio: stopped
        at once if its transcript was blocked, held (C{True}) if it is awaited.
        """
        turn, self._turn_item = self._turn_item, None
        assert turn is not None
        if turn in self._blocked_turns:
            self.output.block(response_id, self._blocked_turns.pop(turn), notify=False)
            return False
        self._turn_of[response_id] = turn
        if not self.turns.awaits(turn):
            return False
        self.turns.hold(response_id, payload)
        return True

    def _replay(self, messages: Messages) -> list[tuple[bytes, bool]]:
        """Held messages of a response, through the output guards now."""
        out: list[tuple[bytes, bool]] = []
        for payload, is_binary in messages:
            out.extend(self.check_server(payload, is_binary))  # type: ignore[arg-type]  # never a transcript: no Deferred
        return out

    def _hold_expired(self, response_id: str, messages: Messages) -> None:
        """No transcript came in time (transcription off, or slow): the response goes to the client after all."""
        for payload, _ in self._replay(messages):
            self.to_client(payload)

    def stop(self) -> None:
        """The session ended: timers stop."""
        self.turns.stop()

    def _session_created(self, event: dict[str, Any]) -> None:
        """C{prompts} reach a session whose client sets no instructions: agw sets them once, enriched."""
        if self._instructions_set or not (self._prompts.prepend or self._prompts.append):
            return
        session = event.get("session")
        current = session.get("instructions") if isinstance(session, dict) else None
        enriched = enriched_instructions(current if isinstance(current, str) else None, self._prompts)
        update: dict[str, Any] = {"instructions": enriched}
        if isinstance(session, dict) and session.get("type") == "realtime":
            update["type"] = "realtime"  # the GA interface wants the session's type on every update
        self._instructions_set = True
        self.to_provider(encode({"type": "session.update", "event_id": agw_event_id(), "session": update}))

    def _check_transcript(self, event: dict[str, Any], payload: bytes) -> Messages | Deferred[Messages]:
        item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else None
        outcome = self._runner(self._request, transcript_slots(event), "request")

        def decided(outcome: GuardOutcome) -> Messages:
            self._note(outcome, "request", {"realtime.event": INPUT_TRANSCRIPT, "realtime.item_id": item_id})
            self.turns.checked(item_id)
            answered = [response_id for response_id, turn in self._turn_of.items() if turn == item_id]
            if outcome.rejection is None:
                out = [(encode(event) if outcome.masked else payload, False)]
                for response_id in answered:
                    out.extend(self._replay(self.turns.take(response_id)))
                return out
            # The provider heard it: stop what it says in answer, and take the item out of the conversation.
            for response_id in answered:
                held = response_id in self.turns.held
                self.turns.take(response_id)
                self.output.block(response_id, outcome.rejection, notify=False, silent=held)
            if not answered and item_id is not None and item_id == self._turn_item:
                self._blocked_turns[item_id] = outcome.rejection  # its response is not under way yet
            if item_id is not None:
                self.to_provider(encode({"type": "conversation.item.delete", "item_id": item_id}))
            self.to_client(refusal_event(outcome, item_id=item_id))
            return ()

        return outcome.addCallback(decided) if isinstance(outcome, Deferred) else decided(outcome)

    def _finish_response(self, response_id: str) -> None:
        self._turn_of.pop(response_id, None)
        self.output.forget(response_id)
