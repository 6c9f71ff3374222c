"""
The fake's C{POST /v1/moderations}: OpenAI's answer shape, one result per
input text (a multi-modal input of content parts is one result), flagged
when the text holds one of the fake's C{moderation_flag_words}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

from agw.testing._state import FakeState

# OpenAI's moderation categories (omni-moderation-latest).
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic",
)
# What a flagged text is flagged for (the fake does not tell words apart).
FLAGGED_AS = frozenset({"illicit/violent", "violence"})


def _inputs(value: Any) -> list[str] | None:
    """The texts to judge, one per result: a string, a list of strings, or one text from a list of content parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [" ".join(item["text"] for item in value if isinstance(item.get("text"), str))]
    return None


def _result(text: str, words: set[str]) -> dict[str, Any]:
    flagged = any(word.lower() in text.lower() for word in words)
    return {
        "flagged": flagged,
        "categories": {name: flagged and name in FLAGGED_AS for name in CATEGORIES},
        "category_scores": {name: (0.97 if flagged and name in FLAGGED_AS else 0.0001) for name in CATEGORIES},
        "category_applied_input_types": {name: ["text"] for name in CATEGORIES},
    }


def _error(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}).encode()


def moderate(fake: FakeState, request: Request, body: Any) -> bytes:
    """Answer one moderation request (already recorded in C{fake.http_requests}); 401 without a bearer key, as OpenAI."""
    request.setHeader(b"content-type", b"application/json")
    authorization = (request.getHeader("authorization") or "").strip()
    if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
        return _error(request, 401, "You didn't provide an API key.")
    inputs = _inputs(body.get("input")) if isinstance(body, dict) else None
    if inputs is None:
        return _error(request, 400, "'input' must be a string, an array of strings or an array of content parts")
    number = next(fake.response_numbers)
    model = body.get("model") if isinstance(body.get("model"), str) else "omni-moderation-latest"
    return json.dumps({
        "id": f"modr-{number}", "model": f"{model}-2024-09-26" if model == "omni-moderation-latest" else model,
        "results": [_result(text, fake.moderation_flag_words) for text in inputs],
    }).encode()
