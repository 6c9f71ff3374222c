"""
L{OutputGuard}: the response guards over a Realtime session's output. The
provider's text and audio transcript deltas are windowed per response,
item and content part (L{agw.decisions.TextStream}); the events that
repeat a text whole are masked to agree with them. A block stops that
response alone: the client is told, the provider gets C{response.cancel}
with its id, the rest of it is dropped, and its C{response.done} (usage)
still goes through, emptied of text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from agw.config import Guard, Rejection
from agw.decisions import (
    TextStream,
    guard_text,
    OUTPUT_DONE,
    encode,
    guardrail_error,
    item_role,
    rejection_text,
    stream_key,
    whole_text_holders,
)
from agw.realtime._ordered import Messages

# Counts and logs one guard's action: (phase, index, action, what it read).
Recorder = Callable[[str, int, str, dict[str, Any]], None]


class Legs(Protocol):
    """Where a guard's own events go."""

    to_client: Callable[[bytes], object]
    to_provider: Callable[[bytes], object]


class OutputGuard:
    """The response guards of one session (none: every method passes events as they are)."""

    def __init__(self, guards: tuple[Guard, ...], hold: int, record: Recorder, legs: Legs) -> None:
        self._guards = guards
        self._hold = hold
        self._record = record
        self._legs = legs
        self._streams: dict[tuple[Any, ...], TextStream] = {}
        self.blocked: set[str] = set()
        self.silent: set[str] = set()

    def forget(self, response_id: str) -> None:
        """C{response_id} is over: drop what its streams still held."""
        for key in [key for key in self._streams if key[0] == response_id]:
            del self._streams[key]

    def delta(self, payload: bytes, event: dict[str, Any], response_id: str | None) -> Messages:
        """A text delta: released (masked) as far as the window allows, held, or the response blocked."""
        delta = event.get("delta")
        if not isinstance(delta, str):
            return [(payload, False)]
        key = stream_key(event)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = TextStream(self._guards, self._hold)
        released = stream.feed(delta)
        if stream.rejection is not None:
            self._stream_blocked(key, stream, response_id)
            return ()
        if not released:
            return ()  # held: part of a match may be in it
        if released == delta:
            return [(payload, False)]  # as it came: nothing of it held back, nothing masked
        event["delta"] = released
        return [(encode(event), False)]

    def whole(
        self, payload: bytes, event: dict[str, Any], kind: str, response_id: str | None, finished: Callable[[str], None],
    ) -> Messages:
        """An event with a whole text (a stream's end, a part, an item, response.done): masked as the deltas were."""
        out: list[tuple[bytes, bool]] = []
        if kind in OUTPUT_DONE:
            # The stream ends: what it still holds goes out first, as the delta it would have been.
            key = stream_key(event)
            stream = self._streams.pop(key, None)
            if stream is not None:
                rest = stream.finish()
                if stream.rejection is not None:
                    self._stream_blocked(key, stream, response_id)
                    return ()
                self._note_stream(stream, response_id)
                if rest:
                    delta = {k: v for k, v in event.items() if k not in ("text", "transcript", "event_id")}
                    out.append((encode({**delta, "type": kind[:-len("done")] + "delta", "delta": rest}), False))
        if kind.startswith("conversation.item.") and item_role(event) != "assistant":
            return [*out, (payload, False)]  # the client's own items: checked on their way in
        changed = False
        for holder, key in whole_text_holders(event):
            masked, rejection, _ = guard_text(self._guards, holder[key])
            if rejection is not None and response_id is not None and kind != "response.done":
                self.block(response_id, rejection)
                return tuple(out)
            masked = masked if rejection is None else ""
            changed = changed or masked != holder[key]
            holder[key] = masked
        if kind == "response.done" and response_id is not None:
            finished(response_id)
        return [*out, (encode(event) if changed else payload, False)]

    def _note_stream(self, stream: TextStream, response_id: str | None) -> None:
        for index, action in stream.actions.items():
            self._record("response", index, action, {"realtime.response_id": response_id})

    def _stream_blocked(self, key: tuple[Any, ...], stream: TextStream, response_id: str | None) -> None:
        self._streams.pop(key, None)
        self._note_stream(stream, response_id)
        if response_id is not None:
            self.block(response_id, stream.rejection)

    def block(self, response_id: str, rejection: Rejection | None, notify: bool = True, silent: bool = False) -> None:
        """Stop C{response_id}: the client is told, the provider cancels it (by id), the rest of it is dropped."""
        if response_id in self.blocked:
            return
        self.blocked.add(response_id)
        if silent:  # the client never saw it begin: nothing of it, its response.done included
            self.silent.add(response_id)
        self.forget(response_id)
        if notify:
            self._legs.to_client(guardrail_error(rejection_text(rejection), response_id=response_id))
        self._legs.to_provider(encode({"type": "response.cancel", "response_id": response_id}))

    def blocked_event(self, kind: Any, response_id: str, event: dict[str, Any], finished: Callable[[str], None]) -> Messages:
        """An event of a blocked response: dropped, but for its C{response.done} (usage; the client's end of it), emptied of text."""
        if kind != "response.done":
            return ()
        if response_id in self.silent:
            self.silent.discard(response_id)
            self.blocked.discard(response_id)
            finished(response_id)
            return ()
        for holder, key in whole_text_holders(event):
            holder[key] = ""
        finished(response_id)
        self.blocked.discard(response_id)
        return [(encode(event), False)]

