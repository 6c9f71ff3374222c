"""Routing: most specific match wins; route type by longest path suffix."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from agw.config import Listener, PathMatch, Route, RouteMatch, RouteType
from agw.routing import BindResource, RoutedRoute, route_type_for


def route(name: str, *matches: tuple[str, str], hostname: str | None = None) -> RoutedRoute:
    r = Route(name=name, matches=tuple(RouteMatch(PathMatch(k, v)) for k, v in matches), backends=())
    return RoutedRoute(Listener(name="l", routes=(r,), hostname=hostname), r, lambda t: Resource())


class SelectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bind = BindResource([
            route("any"),
            route("regex", ("regex", "/v1/.*")),
            route("prefix", ("pathPrefix", "/v1")),
            route("longer", ("pathPrefix", "/v1/realtime")),
            route("exact", ("exact", "/v1/models")),
        ])

    def selected(self, path: str, host: str = "h") -> str | None:
        routed = self.bind.select(host, path)
        return routed.route.name if routed else None

    def test_precedence(self) -> None:
        self.assertEqual(self.selected("/v1/models"), "exact")
        self.assertEqual(self.selected("/v1/realtime"), "longer")
        self.assertEqual(self.selected("/v1/realtime/calls"), "longer")
        self.assertEqual(self.selected("/v1/realtimeX"), "prefix")
        self.assertEqual(self.selected("/v1/chat/completions"), "prefix")
        self.assertEqual(self.selected("/other"), "any")

    def test_prefix_is_element_wise(self) -> None:
        bind = BindResource([route("p", ("pathPrefix", "/v1/realtime"))])
        self.assertIsNone(bind.select("h", "/v1/realtimeX"))

    def test_hostname(self) -> None:
        bind = BindResource([route("a", hostname="api.example.com"), route("w", hostname="*.example.org")])
        self.assertEqual(bind.select("api.example.com", "/").route.name, "a")
        self.assertEqual(bind.select("x.example.org", "/").route.name, "w")
        self.assertIsNone(bind.select("example.org", "/"))


class RouteTypeTests(SynchronousTestCase):
    def test_longest_suffix_then_star(self) -> None:
        routes = (("/completions", RouteType.COMPLETIONS), ("/chat/completions", RouteType.MESSAGES), ("*", RouteType.PASSTHROUGH))
        self.assertEqual(route_type_for("/v1/chat/completions", routes), RouteType.MESSAGES)
        self.assertEqual(route_type_for("/v1/completions", routes), RouteType.COMPLETIONS)
        self.assertEqual(route_type_for("/v1/models", routes), RouteType.PASSTHROUGH)

    def test_no_map_is_completions(self) -> None:
        self.assertEqual(route_type_for("/anything", ()), RouteType.COMPLETIONS)

    def test_map_without_star_falls_back_to_passthrough(self) -> None:
        self.assertEqual(route_type_for("/v1/realtime/sessions", (("/v1/realtime", RouteType.REALTIME),)), RouteType.PASSTHROUGH)
        # The WebRTC endpoints under it are the Realtime route type's own (docs/webrtc.md), never forwarded unread.
        self.assertEqual(route_type_for("/v1/realtime/client_secrets", (("/v1/realtime", RouteType.REALTIME),)), RouteType.REALTIME)
