"""
Regex response guards on a streamed answer (C{promptGuard.streaming:
Enabled}): the decoded events of a chat completion stream or of a
Responses API stream go in, the events to send instead come out. Each
answer text (a chat choice, a Responses content part) goes through its own
L{TextStream}: an event carries only the text released so far, the text
held back follows in a later event (the one that ends that text, or one
added before it), final texts (C{response.output_text.done},
C{response.completed}...) are guarded whole. Pure: the SSE framing is the
HTTP forwarder's.
"""

from __future__ import annotations

from typing import Any

from agw.config import DEFAULT_REJECTION, Guard, Rejection, RouteType, Scope
from agw.decisions._apply import ALLOW, GuardCheck, Slot
from agw.decisions._response import output_slots
from agw.decisions._window import _RANK, TextStream, guard_text

# The chat chunk fields a chunk added by the guard copies from the chunks around it.
_CHUNK_FIELDS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")
# Responses events after which no more text comes: what is held is sent before them.
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_DELTA = "response.output_text.delta"


def blocked_event(rejection: Rejection) -> dict[str, Any]:
    """agentgateway's last event of a blocked stream (an OpenAI SDK raises it as an C{APIError})."""
    message = rejection.body if rejection.body is not None else DEFAULT_REJECTION
    return {"error": {"type": "guardrail_blocked", "code": "guardrail_intervention", "message": message}}


def _scalar(value: Any) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


class StreamedAnswer:
    """
    One streamed answer through the regex guards of C{guards}. Call
    L{event} for each decoded event, L{end} at C{[DONE]} and at the end of
    the stream. Once a guard rejects, C{rejection} is set and nothing more
    is sent: the caller ends the stream with L{blocked_event}.
    """

    def __init__(self, route_type: RouteType, guards: tuple[Guard, ...], hold: int) -> None:
        self._responses = route_type is RouteType.RESPONSES
        self._guards, self._hold = guards, hold
        # Each text's stream, and the fields that place it (chat: the choice index; Responses: item and part).
        self._texts: dict[tuple[Any, ...], tuple[TextStream, dict[str, Any]]] = {}
        self._final_actions = {index: ALLOW for index, guard in enumerate(guards) if guard.regex is not None}
        self.rejection: Rejection | None = None
        self._chunk: dict[str, Any] = {}  # chat: the fields of the last chunk, for chunks added
        # Responses: events added so far (later sequence numbers move up by as many), the next number.
        self._shift = 0
        self._next_number: int | None = None

    @property
    def checks(self) -> tuple[GuardCheck, ...]:
        """Each regex guard (by its index) and the strongest action it took on this answer."""
        actions = dict(self._final_actions)
        for stream, _ in self._texts.values():
            for index, action in stream.actions.items():
                if _RANK[action] > _RANK[actions[index]]:
                    actions[index] = action
        return tuple(GuardCheck(index, action) for index, action in actions.items())

    def event(self, data: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The events to send instead of C{data}: C{None} to send it as it came, C{[]} once blocked."""
        if self.rejection is not None:
            return []
        events = self._response_event(data) if self._responses else self._chat_chunk(data)
        return [] if self.rejection is not None else events

    def end(self) -> list[dict[str, Any]]:
        """The answer is over: events carrying the text still held ([] if none, or blocked)."""
        if self.rejection is not None:
            return []
        added = self._flush(list(self._texts))
        if self.rejection is not None:
            return []
        if self._responses and self._next_number is not None:
            for extra in added:
                extra["sequence_number"] = self._next_number
                self._next_number += 1
        return added

    def _text(self, key: tuple[Any, ...], place: dict[str, Any]) -> TextStream:
        if key not in self._texts:
            self._texts[key] = (TextStream(self._guards, self._hold), place)
        return self._texts[key][0]

    def _released(self, stream: TextStream, text: str, final: bool) -> str:
        out = stream.feed(text) if text else ""
        if final:
            out += stream.finish()
        if stream.rejection is not None:
            self.rejection = stream.rejection
        return out

    def _final(self, text: str) -> str:
        """A whole text, guarded (as it is sent in events that end a text or the answer)."""
        masked, rejection, actions = guard_text(self._guards, text)
        for index, action in actions.items():
            if _RANK[action] > _RANK[self._final_actions[index]]:
                self._final_actions[index] = action
        if rejection is not None:
            self.rejection = rejection
        return masked

    def _flush(self, keys: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Events carrying what the texts of C{keys} still hold, in the stream's own shape."""
        added = []
        for key in keys:
            stream, place = self._texts[key]
            if not stream.pending:
                continue
            text = self._released(stream, "", final=True)
            if self.rejection is not None:
                return []
            if not text:
                continue
            if self._responses:
                added.append({"type": _DELTA, **place, "delta": text, "logprobs": []})
            else:
                choice = {"index": place["index"], "delta": {"content": text}, "logprobs": None, "finish_reason": None}
                added.append({**self._chunk, "choices": [choice]})
        return added

    def _chat_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]] | None:
        self._chunk = {name: chunk[name] for name in _CHUNK_FIELDS if name in chunk}
        choices = chunk.get("choices")
        changed = False
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = _scalar(choice.get("index")) or 0
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            text = content if isinstance(content, str) else ""
            released = self._released(self._text(("choice", index), {"index": index}), text, choice.get("finish_reason") is not None)
            if self.rejection is not None:
                return []
            if released != content and (content is not None or released):
                choice["delta"] = {**(delta if isinstance(delta, dict) else {}), "content": released}
                changed = True
            if choice.get("logprobs") is not None:  # they spell the text, held and masked parts too
                choice["logprobs"] = None
                changed = True
        return [chunk] if changed else None

    @staticmethod
    def _place(event: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Which text a Responses event is about: by item and part, else by output index and part."""
        place = {name: event[name] for name in ("item_id", "output_index", "content_index") if name in event}
        item, output, part = (_scalar(event.get(name)) for name in ("item_id", "output_index", "content_index"))
        return (("item", item, part) if isinstance(item, str) else ("output", output, part)), place

    def _response_event(self, event: dict[str, Any]) -> list[dict[str, Any]] | None:
        kind = event.get("type")
        if not isinstance(kind, str):
            return None
        added: list[dict[str, Any]] = []
        changed = False
        if kind == _DELTA and isinstance(event.get("delta"), str):
            key, place = self._place(event)
            released = self._released(self._text(key, place), event["delta"], final=False)
            changed = released != event["delta"] or bool(event.get("logprobs"))
            event["delta"] = released
            if event.get("logprobs"):
                event["logprobs"] = []
        elif kind in ("response.output_text.done", "response.content_part.done"):
            key, _ = self._place(event)
            added = self._flush([key] if key in self._texts else [])
            changed = self._final_texts(event)
        elif kind == "response.output_item.done" or kind in _TERMINAL:
            added = self._flush(list(self._texts))
            changed = self._final_texts(event)
        elif kind.startswith("response."):
            changed = self._final_texts(event)
        if self.rejection is not None:
            return []
        return self._numbered(added, event, changed)

    def _final_texts(self, event: dict[str, Any]) -> bool:
        """Guard the whole texts an event carries (a done text, a part, an item, the response); whether any changed."""
        slots: list[Slot] = []
        if event.get("type") == "response.output_text.done" and isinstance(event.get("text"), str):
            slots.append(Slot(event, "text", Scope.MESSAGES))
        part, item, response = event.get("part"), event.get("item"), event.get("response")
        if isinstance(part, dict):
            slots.extend(output_slots({"output": [{"content": [part]}]}))
        if isinstance(item, dict):
            slots.extend(output_slots({"output": [item]}))
        if isinstance(response, dict):
            slots.extend(output_slots(response))
        changed = False
        for slot in slots:
            text = self._final(slot.text)
            changed = changed or text != slot.text
            slot.text = text
            if slot.holder.get("logprobs"):  # only on output_text parts (an event's own are dropped with its delta)
                slot.holder["logprobs"] = []
                changed = True
        return changed

    def _numbered(self, added: list[dict[str, Any]], event: dict[str, Any], changed: bool) -> list[dict[str, Any]] | None:
        """C{added} then C{event}, their sequence numbers moved up by the events added so far."""
        number = event.get("sequence_number")
        if isinstance(number, int) and not isinstance(number, bool):
            for extra in added:
                extra["sequence_number"] = number + self._shift
                self._shift += 1
            if self._shift:
                event["sequence_number"] = number + self._shift
                changed = True
            self._next_number = number + self._shift + 1
        if not added and not changed:
            return None
        return [*added, event]
