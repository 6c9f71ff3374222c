"""
Routing: the config's listeners and routes become one twisted.web resource
per bind, which picks the most specific matching route and, within it, the
route type by path suffix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from attrs import frozen
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from agw.config import Listener, Route, RouteMatch, RouteType
from agw.decisions import KeyRefused
from agw.routing._errors import render_error
from agw.routing._target import BadTarget, OriginTarget, parse_target

# Rank of a match kind: exact beats prefix beats regex beats match-all.
_EXACT, _PREFIX, _REGEX, _ANY = 0, 1, 2, 3


@frozen
class _Matcher:
    rank: int
    length: int
    test: Callable[[str], bool]


def _matcher(match: RouteMatch) -> _Matcher:
    path = match.path
    if path is None:
        return _Matcher(_ANY, 0, lambda p: True)
    value = path.value
    if path.kind == "exact":
        return _Matcher(_EXACT, len(value), lambda p: p == value)
    if path.kind == "pathPrefix":
        # Element-wise, as in Gateway API: /v1/realtime matches
        # /v1/realtime/calls, not /v1/realtimeX.
        base = value.rstrip("/")
        return _Matcher(_PREFIX, len(base), lambda p: p == base or p.startswith(base + "/") or base == "")
    pattern = re.compile(value)
    return _Matcher(_REGEX, len(value), lambda p: pattern.fullmatch(p) is not None)


# OpenAI's WebRTC endpoints under a Realtime path: client secrets, calls, a call's hang-up (and the SIP
# calls' accept, reject, refer: agw's own to answer), and agw's SIP webhook.
_WEBRTC = re.compile(
    r"(?P<base>.*)/(?:(?P<name>client_secrets|webhook)|calls(?:/(?P<call>[^/]+)/(?P<action>hangup|accept|reject|refer))?)"
)


@frozen
class WebRTCEndpoint:
    """
    One of OpenAI's WebRTC endpoints (C{client_secrets}, C{calls},
    C{hangup}; C{accept}, C{reject}, C{refer}) or agw's SIP C{webhook}
    under the Realtime path C{realtime_path} (C{/v1/realtime}); C{call_id}
    is the call a hang-up (...) names.
    """

    name: str
    realtime_path: str
    call_id: str | None = None


def webrtc_endpoint(path: str) -> WebRTCEndpoint | None:
    """The WebRTC endpoint C{path} names (C{/v1/realtime/calls}, ...), if it names one."""
    match = _WEBRTC.fullmatch(path)
    if match is None:
        return None
    if match["name"]:
        return WebRTCEndpoint(match["name"], match["base"])
    return WebRTCEndpoint(match["action"], match["base"], match["call"]) if match["call"] else WebRTCEndpoint("calls", match["base"])


def route_type_for(path: str, ai_routes: Sequence[tuple[str, RouteType]]) -> RouteType:
    """
    The route type of C{path}: the longest C{ai.routes} key that C{path}
    ends with; C{"*"} otherwise. No map at all means C{completions}; a map
    that matches nothing (and has no C{"*"}) means C{passthrough}. The
    WebRTC endpoints under a C{realtime} key's path (C{/v1/realtime/calls}
    under C{/v1/realtime}) are that key's: the Realtime route type serves
    them (an explicit key for the longer path still wins).
    """
    if not ai_routes:
        return RouteType.COMPLETIONS
    fallback = RouteType.PASSTHROUGH
    best: tuple[int, RouteType] | None = None
    webrtc = webrtc_endpoint(path)
    for suffix, kind in ai_routes:
        if suffix == "*":
            fallback = kind
            continue
        matched = path.endswith(suffix) or (
            kind is RouteType.REALTIME and webrtc is not None and webrtc.realtime_path.endswith(suffix)
        )
        if matched and (best is None or len(suffix) > best[0]):
            best = (len(suffix), kind)
    return best[1] if best else fallback


def _host_matches(pattern: str | None, host: str) -> bool:
    if pattern is None:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class RoutedRoute:
    """A route of a listener, with the resource of each of its route types."""

    def __init__(self, listener: Listener, route: Route, resource_for: Callable[[RouteType], IResource]) -> None:
        self.listener = listener
        self.route = route
        self._matchers = [_matcher(m) for m in route.matches] or [_matcher(RouteMatch())]
        self._resource_for = resource_for

    def best_match(self, path: str) -> tuple[int, int] | None:
        """C{(rank, -length)} of the best matcher for C{path}, or C{None}."""
        scores = [(m.rank, -m.length) for m in self._matchers if m.test(path)]
        return min(scores) if scores else None

    def resource(self, path: str) -> IResource:
        return self._resource_for(route_type_for(path, self.route.policies.ai_routes))


class BindResource(Resource):
    """The root of one bind: dispatches each request to its route."""

    isLeaf = True

    def __init__(self, routes: Sequence[RoutedRoute], refused: Callable[[bytes, int], None] | None = None) -> None:
        super().__init__()
        self._routes = list(routes)
        self._routed: dict[tuple[str, bytes], tuple[OriginTarget, RoutedRoute | None, IResource | None]] = {}
        # Told of each request refused here (method, status): no route's forwarder will count it.
        self._refused = refused

    def _refuse(self, request: Request, status: int, message: str, code: str) -> bytes:
        if self._refused is not None:
            self._refused(request.method, status)
        return render_error(request, status, message, code, "invalid_request_error")

    # Routed targets remembered (a gateway sees the same few again and again); hostile variety only refills it.
    max_remembered = 4096

    def route(self, host: str, raw_target: bytes) -> tuple[OriginTarget, RoutedRoute | None, IResource | None]:
        """
        The normalised target of C{raw_target}, its route for C{host} and
        that route's resource for it (L{parse_target}, L{select}, each
        route type's resource), remembered; raises L{BadTarget}.
        """
        key = (host, raw_target)
        known = self._routed.get(key)
        if known is None:
            target = parse_target(raw_target)
            routed = self.select(host, target.path)
            known = (target, routed, routed.resource(target.path) if routed is not None else None)
            if len(self._routed) >= self.max_remembered:
                self._routed.clear()
            self._routed[key] = known
        return known

    def select(self, host: str, path: str) -> RoutedRoute | None:
        """The most specific route for C{host} and C{path}; file order breaks ties."""
        best: tuple[tuple[int, int, int], RoutedRoute] | None = None
        for order, routed in enumerate(self._routes):
            if not _host_matches(routed.listener.hostname, host):
                continue
            score = routed.best_match(path)
            if score is not None and (best is None or (*score, order) < best[0]):
                best = ((*score, order), routed)
        return best[1] if best else None

    def refusal_before_body(
        self, method: bytes, target: bytes, host: str, header: Callable[[str], str | None],
    ) -> KeyRefused | None:
        """
        What the route of a request whose body has not arrived would refuse
        it with before reading that body (its client key), if anything:
        asked before a client that waits for C{100 Continue} is told to
        upload. Targets refused anyway and unrouted requests: C{None}
        (L{render} answers them).
        """
        try:
            parsed = parse_target(target)
        except BadTarget:
            return None
        routed = self.select(host.lower(), parsed.path)
        check = getattr(routed.resource(parsed.path), "refusal_before_body", None) if routed is not None else None
        return check(method, parsed.query, header) if check is not None else None

    def render(self, request: Request) -> bytes | int:
        # Relative to where this resource is mounted: the whole target when
        # it is a Site's root, the rest when an embedder put it under a
        # child. The raw bytes are used, not twisted.web's decoded segments,
        # so escapes such as %3F stay escapes.
        raw_path, question, query = request.uri.partition(b"?")
        if request.prepath and raw_path.startswith(b"/"):
            raw_path = b"/" + b"/".join(raw_path.split(b"/")[1 + len(request.prepath):])
        try:
            target = parse_target(raw_path + question + query)
        except BadTarget as bad:
            return self._refuse(request, 400, bad.message, "invalid_request_target")
        # What a route is chosen by is what goes upstream: forwarders and the
        # WebSocket handshake read these.
        request.uri = target.uri
        request.path = target.path.encode("ascii")
        host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        routed = self.select(host, target.path)
        if routed is None:
            return self._refuse(request, 404, f"no route for {target.path}", "route_not_found")
        request.agw_route = routed  # type: ignore[attr-defined]
        return routed.resource(target.path).render(request)
