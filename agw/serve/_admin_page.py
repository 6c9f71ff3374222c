"""
The admin listener's tree (C{adminAddr}): the operator's page at C{/}
(plain HTML, CSS and JavaScript shipped in the package: no build step,
nothing fetched from anywhere else), its JSON under C{/api/}, and
C{/budgets}. See docs/admin.md.

Every answer keeps to its own origin (a Content-Security-Policy that
allows only this origin's script, style and requests; no framing). A
request whose C{Host} is a DNS name other than C{localhost} or adminAddr's
own host is refused: a page on another site that rebinds its name to
loopback gets nothing. The one request that changes anything, C{POST
/api/sessions/{id}/close}, must say C{Content-Type: application/json}
(which an HTML form cannot send, and which a script on another origin
cannot send without a CORS preflight that is never granted) and, when a
browser says where it comes from (C{Origin}), come from the page's origin.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from importlib.resources import files
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from agw.metering import Governor
from agw.routing import error_body
from agw.serve._operator import OPERATOR_REASON

# A close request's body ({"reason": ...}) is small; the admin site refuses larger ones (413).
ADMIN_MAX_BODY = 4096
MAX_REASON_BYTES = 123  # what a close frame holds
# The page's files (package data in agw/serve/admin_ui/) by path: nothing else is served from the package.
PAGE_FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/admin.js": ("admin.js", b"text/javascript; charset=utf-8"),
    "/ui/admin.css": ("admin.css", b"text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
CLOSE_PATH = re.compile(r"/api/sessions/([A-Za-z0-9._-]{1,80})/close")
_HEADERS = {
    b"content-security-policy": b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


class AdminSource(Protocol):
    """Where the page's data comes from: one process (L{agw.serve._operator.OperatorView}) or a pool's workers."""

    def sessions(self) -> dict[str, Any] | Deferred[dict[str, Any]]: ...

    def consumers(self) -> dict[str, Any] | Deferred[dict[str, Any]]: ...

    def costs(self) -> dict[str, Any] | Deferred[dict[str, Any]]: ...

    def close(self, session_id: str, reason: str) -> bool | Deferred[bool]: ...


def host_allowed(host: bytes | None, admin_host: str) -> bool:
    """
    Whether a request's C{Host} may reach the admin listener: an IP address,
    C{localhost}, or adminAddr's own host name (never another DNS name: DNS
    rebinding would make a page on any site same-origin with this one).
    """
    if not host:
        return False
    try:
        name = urlsplit("//" + host.decode("ascii")).hostname
    except (UnicodeDecodeError, ValueError):
        return False
    if name is None:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in ("localhost", admin_host.lower().strip("[]"))


def same_origin(origin: bytes, host: bytes) -> bool:
    """Whether a browser's C{Origin} is the page's own (C{http://} or, behind a proxy, C{https://} and this C{Host})."""
    try:
        parts = urlsplit(origin.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.decode("ascii").lower()


class AdminResource(Resource):
    """
    The admin listener's whole tree: the page, C{GET /api/sessions},
    C{/api/consumers}, C{/api/costs}, C{POST /api/sessions/{id}/close}, and
    C{GET /budgets} (C{governor()}'s budgets; none without budgets).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, source: AdminSource, governor: Callable[[], Governor | None], clock: Any, admin_host: str) -> None:
        super().__init__()
        self._source, self._governor, self._clock, self._admin_host = source, governor, clock, admin_host
        folder = files("agw.serve").joinpath("admin_ui")
        self._files = {path: (folder.joinpath(name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}
        self._reads: dict[str, Callable[[], Any]] = {
            "/api/sessions": source.sessions, "/api/consumers": source.consumers, "/api/costs": source.costs,
            "/budgets": self._budgets,
        }

    def render(self, request: Request) -> bytes | int:
        for name, value in _HEADERS.items():
            request.responseHeaders.setRawHeaders(name, [value])
        if not host_allowed(request.getHeader(b"host"), self._admin_host):
            return _error(request, 403, "the admin page answers to an IP address, localhost or adminAddr's host only", "host_not_allowed")
        path = request.path.decode("ascii", "replace")
        method = request.method
        close = CLOSE_PATH.fullmatch(path)
        if close is not None:
            if method != b"POST":
                return _not_allowed(request, b"POST")
            return self._close(request, close.group(1))
        if path not in PAGE_FILES and path not in self._reads:
            return _error(request, 404, "not found", "not_found")
        if method not in (b"GET", b"HEAD"):
            return _not_allowed(request, b"GET, HEAD")
        if path in PAGE_FILES:
            body, kind = self._files[path]
            request.responseHeaders.setRawHeaders(b"content-type", [kind])
            return body
        return self._answer(request, maybeDeferred(self._reads[path]))

    def _budgets(self) -> dict[str, Any]:
        governor, now = self._governor(), self._clock.seconds()
        if governor is None:
            return {"consumers": []}
        return {
            "consumers": [
                {"name": name, "budgets": [state.as_json(now) for state in governor.states(name)]} for name in governor.consumers
            ],
        }

    def _close(self, request: Request, session_id: str) -> bytes | int:
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            return _error(request, 415, "send Content-Type: application/json", "json_required")
        origin = request.getHeader(b"origin")
        if origin is not None and not same_origin(origin, request.getHeader(b"host") or b""):
            return _error(request, 403, "a request from another origin may not end a session", "cross_origin")
        body = request.content.read(ADMIN_MAX_BODY + 1) if request.content is not None else b""
        if len(body) > ADMIN_MAX_BODY:
            return _error(request, 413, f"the body is larger than {ADMIN_MAX_BODY} bytes", "request_too_large")
        reason = OPERATOR_REASON
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError:
                return _error(request, 400, "the body is not JSON", "invalid_json")
            if not isinstance(data, dict) or not isinstance(data.get("reason", reason), str):
                return _error(request, 400, 'expected {"reason": "..."}', "invalid_body")
            reason = data.get("reason") or reason
        reason = reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")
        peer = getattr(request.getClientAddress(), "host", None)

        def ended(found: bool) -> tuple[int, dict[str, Any]]:
            if not found:
                return 404, json.loads(error_body(f"no live session {session_id}", "invalid_request_error", "session_not_found"))
            self.log.info("admin: session {session} ended by an operator ({peer}): {reason}", session=session_id, peer=peer, reason=reason)
            return 202, {"id": session_id, "closing": True, "reason": reason}

        return self._answer(request, maybeDeferred(self._source.close, session_id, reason).addCallback(ended))

    def _answer(self, request: Request, result: Deferred[Any]) -> int:
        """Answer with C{result}'s JSON (a C{(status, body)} pair, or a body for 200) when it comes."""
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)  # the client went away: nothing to write to

        def write(outcome: Any) -> None:
            status, body = outcome if isinstance(outcome, tuple) else (200, outcome)
            if gone:
                return
            request.setResponseCode(status)
            request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            request.write(json.dumps(body).encode())
            request.finish()

        def failed(failure: Any) -> None:
            self.log.failure("admin: {path} failed", failure, path=request.path)
            if not gone:
                request.write(_error(request, 500, "the admin request failed", "internal_error"))
                request.finish()

        result.addCallback(write).addErrback(failed)
        return NOT_DONE_YET


def _error(request: Request, status: int, message: str, code: str) -> bytes:
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    return error_body(message, "invalid_request_error" if status < 500 else "gateway_error", code)


def _not_allowed(request: Request, allow: bytes) -> bytes:
    request.responseHeaders.setRawHeaders(b"allow", [allow])
    return _error(request, 405, f"method not allowed here (allowed: {allow.decode()})", "method_not_allowed")
