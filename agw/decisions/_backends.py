"""
What a guard backend is sent and what its answer means, without the call
itself: agentgateway's guardrail webhook (C{POST /request} with the
messages, C{POST /response} with the choices; the answer's C{action} is a
mask, a reject or a pass) and OpenAI's moderation endpoint (C{input} and
C{model}; any flagged result rejects). Pure: the caller does the I/O
(L{agw.http}) and hands the parsed answers here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from agw.config import Guard, HeaderMatch, Rejection
from agw.decisions._apply import ALLOW, MASK, REJECT, Slot

REQUEST, RESPONSE = "request", "response"


class BadAnswer(Exception):
    """A guard backend's answer that says nothing agw can act on (its failure mode decides)."""


@frozen
class Verdict:
    """What one guard backend decided: C{action} (allow, mask, reject) and, on reject, the answer to send."""

    action: str
    rejection: Rejection | None = None


def in_scope(guard: Guard, slots: list[Slot]) -> list[Slot]:
    """The slots C{guard} reads (webhook and moderation guards: always systemPrompt and messages)."""
    return [slot for slot in slots if slot.scope in guard.scope]


def webhook_payload(slots: list[Slot], phase: str) -> dict[str, Any]:
    """
    The webhook's request body: C{{"body": {"messages": [{role, content}]}}}
    for the request phase, C{{"body": {"choices": [{"message": {"role":
    "assistant", content}}]}}} for the response phase; one entry per text.
    """
    if phase == REQUEST:
        return {"body": {"messages": [{"role": slot.role, "content": slot.text} for slot in slots]}}
    return {"body": {"choices": [{"message": {"role": "assistant", "content": slot.text}} for slot in slots]}}


def _texts(body: dict[str, Any], phase: str, count: int) -> list[str]:
    """The texts of a mask's body, one per text sent, in order; L{BadAnswer} otherwise."""
    if phase == REQUEST:
        entries, what = body.get("messages"), "messages"
        messages = entries if isinstance(entries, list) else None
    else:
        entries, what = body.get("choices"), "choices"
        messages = [e.get("message") if isinstance(e, dict) else None for e in entries] if isinstance(entries, list) else None
    if messages is None:
        raise BadAnswer(f"a mask for the {phase} phase needs body.{what}")
    if len(messages) != count:
        raise BadAnswer(f"a mask must give back {count} {what}, got {len(messages)}")
    texts = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadAnswer(f"each of the mask's {what} needs a string content")
        texts.append(message["content"])
    return texts


def webhook_verdict(answer: Any, slots: list[Slot], phase: str) -> Verdict:
    """
    Read a webhook's answer C{{"action": ...}} and apply a mask to
    C{slots} (the ones sent, in order). The action is untagged, as
    agentgateway's: a C{body} object is a mask, a string C{body} with a
    C{status_code} is a reject, anything else a pass. agw is stricter
    than agentgateway's decoder where it would quietly pass a malformed
    mask or reject: that is a L{BadAnswer}.
    """
    action = answer.get("action") if isinstance(answer, dict) else None
    if not isinstance(action, dict):
        raise BadAnswer('expected a JSON object with an "action" object')
    if action.get("reason") is not None and not isinstance(action["reason"], str):
        raise BadAnswer("reason must be a string")
    body = action.get("body")
    if isinstance(body, dict):
        texts = _texts(body, phase, len(slots))
        for slot, text in zip(slots, texts):
            slot.text = text
        return Verdict(MASK)
    if "status_code" in action or isinstance(body, str):
        status = action.get("status_code")
        if not isinstance(body, str) or not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise BadAnswer("a reject needs a string body and a status_code between 200 and 599")
        return Verdict(REJECT, Rejection(status=status, body=body))
    return Verdict(ALLOW)


# Never sent to a webhook, whatever forwardHeaderMatches says: framing
# (the webhook request has its own), and what agw sets itself.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length", "content-type", "content-encoding", "expect",
})


def forwarded_headers(headers: Mapping[str, str], matches: tuple[HeaderMatch, ...]) -> dict[str, str]:
    """
    The client's headers (lower-case names) that C{forwardHeaderMatches}
    selects: a header whose value matches one of its entries. Nothing else
    reaches the webhook: no credentials unless an entry names them, and
    never the gateway's own (they are not among the client's headers).
    """
    forwarded: dict[str, str] = {}
    for match in matches:
        value = headers.get(match.name)
        if value is not None and match.name not in _NOT_FORWARDED and match.matches(value):
            forwarded[match.name] = value
    return forwarded


def moderation_payload(slots: list[Slot], model: str) -> dict[str, Any]:
    """OpenAI's moderation request: the texts as C{input}, and the model."""
    return {"input": [slot.text for slot in slots], "model": model}


def moderation_verdict(answer: Any, rejection: Rejection) -> Verdict:
    """Reject with C{rejection} if any of the answer's C{results} is flagged; L{BadAnswer} if it has none."""
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or not all(isinstance(result, dict) for result in results):
        raise BadAnswer('expected a JSON object with a "results" list')
    if any(result.get("flagged") is True for result in results):
        return Verdict(REJECT, rejection)
    return Verdict(ALLOW)
