"""
What agw's front door does with a request once its head has arrived,
before any of its body: the forwarder that serves it, a hand-off to the
bind's twisted.web site, or agw's own refusal (a target that is not a
path, no route, a body over the route's limit by its C{Content-Length}, a
client waiting for C{100 Continue} whose key its route would refuse).
Pure decisions; the door acts on them.
"""

from __future__ import annotations

import httptools
from attrs import frozen

from agw.decisions import KeyRefused
from agw.http import HTTPForwarder, Refused
from agw.routing import BadTarget, BindResource
from agw.serve._front_request import FrontRequest
from agw.serve._site import NOT_ORIGIN_FORM, host_name


@frozen
class Refusal:
    """agw's own answer: C{closes} the connection (what follows cannot be read) or not."""

    status: int
    message: str
    code: str
    error_type: str | None = None
    closes: bool = True

    @classmethod
    def of(cls, error: Refused | KeyRefused) -> Refusal:
        """The refusal a forwarder would answer with (its status, message, code and type); the connection closes."""
        return cls(error.status, error.message, error.code, error.error_type)


class HandOff:
    """The request is the bind's twisted.web site's to serve (an upgrade, the WebRTC endpoints, an embedder's tree)."""


HAND_OFF = HandOff()


def unreadable(error: httptools.HttpParserError) -> Refusal:
    """The answer to what llhttp could not parse."""
    if isinstance(error, httptools.HttpParserInvalidURLError) and not str(error).startswith("Invalid char"):
        # Not origin-form (a host glued on, authority-form): as parse_target refuses what llhttp lets through.
        return Refusal(400, f"{NOT_ORIGIN_FORM}: {error}", "invalid_request_target", "invalid_request_error")
    # Bytes no request-line or header may hold, a broken framing, a head too large.
    return Refusal(400, "the request could not be read as HTTP/1.1", "invalid_request")


def route_head(routes: BindResource | None, request: FrontRequest) -> HTTPForwarder | Refusal | HandOff:
    """Where C{request} goes (C{routes}: the bind's, C{None} when the site is not a bind's); sets its normalised target."""
    if request.upgrade or routes is None:
        return HAND_OFF
    if request.uri == b"*":
        return Refusal(400, NOT_ORIGIN_FORM, "invalid_request_target", closes=False)
    try:
        target, routed, resource = routes.route(host_name(request.header_text("host") or "").lower(), request.uri)
    except BadTarget as bad:
        return Refusal(400, bad.message, "invalid_request_target", closes=False)
    request.uri, request.path = target.uri, target.path.encode("ascii")
    if routed is None:
        return Refusal(404, f"no route for {target.path}", "route_not_found", closes=False)
    if not isinstance(resource, HTTPForwarder):
        return HAND_OFF
    request.agw_route = routed
    body = request.agw_body
    limit = resource.body_limit(request.method)
    if isinstance(body.length, int) and body.length > limit:
        return Refusal.of(Refused.too_large(limit))
    if request.expects_continue:
        refused = resource.refusal_before_body(request.method, target.query, request.header_text)
        if refused is not None:
            return Refusal.of(refused)
    return resource
