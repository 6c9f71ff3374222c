"""
The fake's HTTP API: chat completions (JSON and SSE), embeddings,
responses, moderations, and an echo for every other path, with scripted failures.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from agw.config import MiB
from agw.testing._moderation import moderate
from agw.testing._state import Billed, FakeState, HTTPRequest, Refusal


def chat_usage(number: int) -> dict[str, Any]:
    """The deterministic usage of the fake's C{number}th HTTP completion."""
    prompt, completion = 10 + 2 * number, 5 + number
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 4 * (number % 2), "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
    }


def _billed(operation: str, model: str, input_tokens: int, output_tokens: int, cached: int | None) -> Billed:
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cached is not None:
        usage["input_token_details"] = {"cached_tokens": cached}
    return Billed(operation, model, usage)


async def _after_hold(fake: FakeState, request: Request) -> bool:
    """
    Wait while the fake holds what bills (L{FakeState.hold_billing}), before
    anything is billed or answered; C{False} if the caller left meanwhile
    (then nothing is billed: nothing was generated for it).
    """
    held = fake.billing_held()
    if held is None:
        return True
    left: list[bool] = []
    request.notifyFinish().addErrback(lambda _: left.append(True))
    while held is not None:
        await held
        held = fake.billing_held()
    return not left


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n").encode()


_AZURE_PATH = re.compile(r"^(?:/api/projects/[^/]+)?/openai(?:/v1|/deployments/(?P<deployment>[^/]+))(?P<rest>/.*)$")


def _pieces(deltas: tuple[str, ...]) -> list[str]:
    """A chat stream's content pieces: the default reply keeps the fake's old split (Hel, lo, !)."""
    return ["Hel", "lo", "!"] if deltas == ("Hello", "!") else list(deltas) or [""]


def openai_path(path: str) -> tuple[str, str | None]:
    """
    The OpenAI path an Azure path means, and the deployment it names:
    C{/openai/v1/X}, C{/openai/deployments/D/X} and Foundry's
    C{/api/projects/P/openai/v1/X} all mean C{/v1/X}. Other paths are theirs.
    """
    match = _AZURE_PATH.match(path)
    if match is None:
        return path, None
    return "/v1" + match["rest"], match["deployment"]


def azure_authenticated(api_key: str | None, authorization: str | None) -> bool:
    """Whether an Azure request carries a key: C{api-key}, or a bearer token (Entra ID, or a key on /openai/v1)."""
    return bool(api_key) or bool(authorization and authorization.lower().startswith("bearer "))


def azure_refusal(path: str, params: dict[str, list[str]], headers: dict[str, str]) -> Refusal | None:
    """Azure's 401s: no key, or an C{api-version} on the GA path (Azure refuses it there)."""
    if not azure_authenticated(headers.get("api-key"), headers.get("authorization")):
        return Refusal(401)
    if path == "/openai/v1/realtime" and "api-version" in params:
        return Refusal(401)
    return None


class FakeAzure(Resource):
    """C{/openai} and C{/api}: Azure's paths, Realtime ones to C{realtime}, the rest to the HTTP API."""

    def __init__(self, realtime: Resource, http: Resource) -> None:
        super().__init__()
        self._realtime, self._http = realtime, http

    def getChild(self, path: bytes, request: Request) -> Resource:
        if request.path.rstrip(b"/") in (b"/openai/v1/realtime", b"/openai/realtime"):
            return self._realtime
        return self._http


class FakeHTTPAPI(Resource):
    """Every C{/v1/...} path but C{realtime}."""

    isLeaf = True

    def __init__(self, fake: FakeState) -> None:
        super().__init__()
        self._fake = fake

    def render(self, request: Request) -> bytes | int:
        fake = self._fake
        body = self._record(request)
        request.setHeader(b"set-cookie", f"fake_session={len(fake.http_requests)}; Path=/".encode())
        script = fake.take_http_script()
        if script is not None:
            status, payload = script
            if status == 0:  # hang: answer never, note when the gateway gives up
                request.notifyFinish().addErrback(lambda _: fake.http_abandoned.append(request.uri))
                return NOT_DONE_YET
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return payload
        path, deployment = openai_path(request.path.decode())
        if path != request.path.decode() and not azure_authenticated(request.getHeader("api-key"), request.getHeader("authorization")):
            request.setResponseCode(401)  # as Azure answers a request without a key
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"code": "401", "message": "Access denied due to missing subscription key."}}).encode()
        if isinstance(body, dict) and deployment is not None:
            body.setdefault("model", deployment)  # a deployment path needs no model in the body
        if path.startswith("/v1/realtime/") and request.method == b"POST" and hasattr(fake, "webrtc_answer"):
            return fake.webrtc_answer(request, path)  # type: ignore[no-any-return]
        if path == "/v1/moderations" and request.method == b"POST":
            return moderate(fake, request, body)
        handler = {
            "/v1/chat/completions": self._chat,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }.get(path)
        if handler is None or request.method != b"POST":
            return self._echo(request)
        if not isinstance(body, dict):
            request.setResponseCode(400)
            return json.dumps({"error": {"message": "bad json", "type": "invalid_request_error", "code": None}}).encode()
        ensureDeferred(handler(request, body))
        return NOT_DONE_YET

    def _record(self, request: Request) -> Any:
        content = request.content
        content.seek(0)
        digest, size, head = hashlib.sha256(), 0, b""
        while chunk := content.read(MiB):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < MiB:
                head += chunk
        try:
            body = json.loads(head) if size <= MiB else None
        except ValueError:
            body = None
        headers = {k.decode().lower(): b", ".join(v).decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self._fake.http_requests.append(
            HTTPRequest(request.method.decode(), request.uri.decode(), headers, size, digest.hexdigest(), body)
        )
        return body

    def _echo(self, request: Request) -> bytes:
        seen = self._fake.http_requests[-1]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "method": seen.method, "uri": seen.uri, "body_size": seen.body_size, "body_sha256": seen.body_sha256,
            "headers": seen.headers,
        }).encode()

    async def _chat(self, request: Request, body: dict[str, Any]) -> None:
        fake = self._fake
        if not await _after_hold(fake, request):
            return
        number = next(fake.response_numbers)
        model = f"{body.get('model', 'unknown')}-2025-01-01"
        usage = chat_usage(number)
        fake.ledger.append(
            _billed("chat", model, usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"])
        )
        base = {"id": f"chatcmpl-{number}", "created": 0, "model": model}
        if body.get("stream") is not True:
            request.setHeader(b"content-type", b"application/json")
            message = {"role": "assistant", "content": "".join(fake.reply_deltas)}
            request.write(json.dumps({**base, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}).encode())
            request.finish()
            return
        request.setHeader(b"content-type", b"text/event-stream")
        chunk = {**base, "object": "chat.completion.chunk"}
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        first, *rest = _pieces(fake.reply_deltas)
        request.write(_sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": first}}], **({"usage": None} if include_usage else {})}))
        if fake.stream_gate is not None:
            gate, fake.stream_gate = fake.stream_gate, None
            await gate
        for piece in rest:
            request.write(_sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece}}]}))
        request.write(_sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if include_usage:
            request.write(_sse({**chunk, "choices": [], "usage": usage}))
        request.write(_sse("[DONE]"))
        request.finish()

    async def _embeddings(self, request: Request, body: dict[str, Any]) -> None:
        """
        One embedding per item of C{input} (a list; anything else is one
        input), each of C{dimensions} floats (3 by default: C{[0.0, 0.5,
        1.0]}), in OpenAI's field order (C{usage} last), so a test can ask
        for a body of any size.
        """
        fake = self._fake
        if not await _after_hold(fake, request):
            return
        number = next(fake.response_numbers)
        model = body.get("model", "unknown")
        tokens = 8 + number
        fake.ledger.append(_billed("embeddings", model, tokens, 0, None))
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs else 1
        dimensions = body.get("dimensions")
        size = dimensions if isinstance(dimensions, int) and not isinstance(dimensions, bool) and dimensions > 0 else 3
        vector = [i / max(size - 1, 1) for i in range(size)]
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }).encode())
        request.finish()

    async def _responses(self, request: Request, body: dict[str, Any]) -> None:
        fake = self._fake
        if not await _after_hold(fake, request):
            return
        number = next(fake.response_numbers)
        model = f"{body.get('model', 'unknown')}-2025-01-01"
        usage = {
            "input_tokens": 30 + number, "input_tokens_details": {"cached_tokens": 2 * number},
            "output_tokens": 12 + number, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 42 + 2 * number,
        }
        fake.ledger.append(_billed("chat", model, usage["input_tokens"], usage["output_tokens"], usage["input_tokens_details"]["cached_tokens"]))
        response = {
            "id": f"resp_{number}", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "".join(fake.reply_deltas)}]}],
            "usage": usage,
        }
        if body.get("stream") is not True:
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(response).encode())
        else:
            request.setHeader(b"content-type", b"text/event-stream")
            in_progress = {**response, "status": "in_progress", "usage": None, "output": []}
            request.write(_sse({"type": "response.created", "response": in_progress}, "response.created"))
            for piece in fake.reply_deltas:
                request.write(_sse({"type": "response.output_text.delta", "delta": piece}, "response.output_text.delta"))
            request.write(_sse({"type": "response.completed", "response": response}, "response.completed"))
        request.finish()


class FakeV1(Resource):
    """C{/v1}: C{realtime} is a WebSocket endpoint, everything else HTTP."""

    def __init__(self, realtime: Resource, http: Resource) -> None:
        super().__init__()
        self._realtime, self._http = realtime, http

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"realtime" and not request.postpath:
            return self._realtime
        request.postpath.insert(0, path)
        request.prepath.pop()
        return self._http

    def render(self, request: Request) -> bytes:
        return self._http.render(request)
