"""
L{FakeGuardrailWebhook}: a guardrail webhook speaking agentgateway's wire
format, for tests and for trying a webhook guard out: it rejects texts
that hold a word, masks patterns, or misbehaves on request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: What L{FakeGuardrailWebhook.misbehaviour} may say.
MISBEHAVIOURS = frozenset({"hang", "error", "garbage", "wrong_count"})


@frozen
class WebhookCall:
    """What the webhook saw of one call: C{/request} or C{/response}, headers (lower-case names), the JSON body."""

    path: str
    headers: dict[str, str]
    json: Any

    @property
    def texts(self) -> list[str]:
        """The texts sent: each message's content (request) or each choice's message content (response)."""
        body = self.json["body"]
        if "messages" in body:
            return [message["content"] for message in body["messages"]]
        return [choice["message"]["content"] for choice in body["choices"]]


class FakeGuardrailWebhook(Resource):
    """
    A webhook guard's backend (C{POST /request}, C{POST /response}). Each
    call is recorded in L{calls}. It answers, in this order: a reject
    (C{reject_status}, body C{"rejected: <word>"}) if a text holds one of
    L{reject_words}; a mask if any of L{masks} (pattern -> replacement)
    matches, every text given back with the replacements; else a pass.

    With L{misbehaviour} set, every call is answered instead: C{hang}
    (never; L{hanging} holds the requests, L{abandoned} counts those the
    caller gave up on), C{error} (500, with a pass in the body), C{garbage}
    (200, not JSON) or C{wrong_count} (a mask with one text too few).
    """

    isLeaf = True

    def __init__(self, reject_words: set[str] | None = None, masks: dict[str, str] | None = None, reject_status: int = 403) -> None:
        super().__init__()
        self.reject_words: set[str] = set(reject_words or ())
        self.masks: dict[str, str] = dict(masks or {})
        self.reject_status = reject_status
        self.misbehaviour: str | None = None
        self.calls: list[WebhookCall] = []
        self.hanging: list[Request] = []
        self.abandoned = 0

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode()
        headers = {k.decode().lower(): b", ".join(v).decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        try:
            body = json.loads(request.content.read())
        except ValueError:
            body = None
        call = WebhookCall(path, headers, body)
        self.calls.append(call)
        request.setHeader(b"content-type", b"application/json")
        if path not in ("/request", "/response") or not isinstance(body, dict):
            request.setResponseCode(404 if isinstance(body, dict) else 400)
            return b'{"error": "expected POST /request or /response with a JSON body"}'
        if self.misbehaviour == "hang":
            self.hanging.append(request)
            request.notifyFinish().addErrback(self._abandoned)
            return NOT_DONE_YET
        if self.misbehaviour == "error":
            request.setResponseCode(500)
            return b'{"action": {"reason": "a 500 is no answer"}}'
        if self.misbehaviour == "garbage":
            return b"<html>not json</html>"
        return json.dumps({"action": self.decide(path, call.texts)}).encode()

    def _abandoned(self, _: object) -> None:
        self.abandoned += 1

    def decide(self, path: str, texts: list[str]) -> dict[str, Any]:
        """The C{action} for C{texts} (see the class)."""
        for text in texts:
            for word in sorted(self.reject_words):
                if word.lower() in text.lower():
                    return {"body": f"rejected: {word}", "status_code": self.reject_status, "reason": f"holds {word!r}"}
        masked = list(texts)
        for pattern, replacement in self.masks.items():
            masked = [re.sub(pattern, replacement, text) for text in masked]
        if masked == texts and self.misbehaviour != "wrong_count":
            return {"reason": "nothing found"}
        if self.misbehaviour == "wrong_count":
            masked = masked[:-1]
        if path == "/request":
            return {"body": {"messages": [{"role": "user", "content": text} for text in masked]}, "reason": "masked"}
        return {"body": {"choices": [{"message": {"role": "assistant", "content": text}} for text in masked]}, "reason": "masked"}

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> Deferred[IListeningPort]:
        """Listen on loopback (an ephemeral port by default): a webhook guard's C{target.host} is C{127.0.0.1:<port>}."""
        site = Site(self, reactor=reactor)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # the calls are in self.calls
        return TCP4ServerEndpoint(reactor, port, interface=interface).listen(site)
