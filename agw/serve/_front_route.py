"""
What agw's front door does with a request once its head has arrived,
before any of its body: the forwarder that serves it, a Realtime session's
handshake for the relay's protocol, a hand-off to the bind's twisted.web
site, or agw's own refusal (a target that is not a path, no route, a body
over the route's limit by its C{Content-Length}, a client waiting for
C{100 Continue} whose key its route would refuse). Pure decisions; the
door acts on them.
"""

from __future__ import annotations

import re
from typing import Any

import httptools
from attrs import frozen

from agw.decisions import KeyRefused
from agw.http import HTTPForwarder, Refused
from agw.realtime import RealtimeResource
from agw.routing import BadTarget, BindResource
from agw.serve._front_request import FrontRequest
from agw.serve._site import NOT_ORIGIN_FORM, host_name
from agw.serve._takeover import TWISTED_WEB_HEAD, web_head_size


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


@frozen
class TakeOver:
    """A Realtime session's handshake: the connection goes to a protocol of C{factory}, the relay's (L{SessionTakeover})."""

    factory: Any


def unreadable(error: httptools.HttpParserError) -> Refusal:
    """The answer to what llhttp could not parse."""
    if isinstance(error, httptools.HttpParserInvalidURLError) and not str(error).startswith("Invalid char"):
        # Not origin-form (a host glued on, authority-form): as parse_target refuses what llhttp lets through.
        return Refusal(400, f"{NOT_ORIGIN_FORM}: {error}", "invalid_request_target", "invalid_request_error")
    # Bytes no request-line or header may hold, a broken framing, a head too large.
    return Refusal(400, "the request could not be read as HTTP/1.1", "invalid_request")


def route_head(routes: BindResource | None, request: FrontRequest) -> HTTPForwarder | Refusal | HandOff | TakeOver:
    """Where C{request} goes (C{routes}: the bind's, C{None} when the site is not a bind's); sets its normalised target."""
    if routes is None:
        return HAND_OFF
    if request.upgrade:
        return _session(routes, request)
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


# The host twisted.web routes an upgrade by (Request.getRequestHostname): the one a taken-over handshake is routed by.
_WEB_HOST = re.compile(rb"^\[?(?P<host>.*?)\]?(:\d+)?$")


def _sole(request: FrontRequest, name: bytes) -> bytes | None:
    """The value of header C{name} if C{request} has it once (twisted.web and the door read the others differently)."""
    values = [value for each, value in request.requestHeaders.pairs if each == name]
    return values[0] if len(values) == 1 else None


def _session(routes: BindResource, request: FrontRequest) -> TakeOver | HandOff:
    """
    An upgrade: a Realtime session's handshake (a WebSocket upgrade its
    route's realtime type takes, L{RealtimeResource.session_factory}) is
    taken over, routed as twisted.web routes it; anything else, and
    anything twisted.web would answer itself before the relay saw it (a
    body, a head over its size, headers it would read otherwise than the
    door: a second Host or Upgrade), is twisted.web's, as before.
    """
    host, upgrade = _sole(request, b"host"), _sole(request, b"upgrade")
    if request.method != b"GET" or host is None or upgrade is None or request.agw_body.length != 0:
        return HAND_OFF
    if web_head_size(request) > TWISTED_WEB_HEAD:
        return HAND_OFF
    try:
        target, _, resource = routes.route(_WEB_HOST.match(host)["host"].decode("ascii", "replace").lower(), request.uri)
    except BadTarget:
        return HAND_OFF
    factory = resource.session_factory(target.path, upgrade) if isinstance(resource, RealtimeResource) else None
    if factory is None:
        return HAND_OFF
    request.uri, request.path = target.uri, target.path.encode("ascii")  # what Autobahn reads, as through twisted.web
    return TakeOver(factory)
