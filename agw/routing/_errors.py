"""
OpenAI-shaped JSON errors, and what a request says of its client.
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource
from twisted.web.server import Request

from agw._internals import request_disconnected


def client_host(request: Request) -> str | None:
    """The IP address of the client's TCP peer, if it has one."""
    return getattr(request.getClientAddress(), "host", None)


def client_gone(request: Request) -> bool:
    """Whether the client's connection is gone."""
    return request_disconnected(request)


def error_body(message: str, error_type: str, code: str | None) -> bytes:
    """OpenAI's error shape: C{{"error": {"message", "type", "code"}}}."""
    return json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()


# Phrases twisted.web does not know.
_PHRASES = {426: b"Upgrade Required", 499: b"Client Closed Request"}


def render_error(request: Request, status: int, message: str, code: str, error_type: str = "gateway_error") -> bytes:
    """Set C{status} and JSON headers on C{request}; return the error body."""
    request.setResponseCode(status, _PHRASES.get(status))
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    return error_body(message, error_type, code)


class ErrorResource(Resource):
    """Answers every request with one JSON error."""

    isLeaf = True

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__()
        self._status, self._message, self._code = status, message, code

    def render(self, request: Request) -> bytes:
        return render_error(request, self._status, self._message, self._code)
