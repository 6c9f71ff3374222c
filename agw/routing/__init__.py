"""
Routing: what a request is and where it goes. The request-target checked
and normalised once (L{parse_target}), the resource tree of a bind that
picks a route (L{BindResource}), the backend a route sends to
(L{BackendTarget}: its URL built from parts, never from the request-target),
the header policy, the L{RouteContext} every forwarder and relay of a route
shares, OpenAI-shaped errors, and what is still open
(L{ConnectionTracker}). Client keys are L{agw.decisions}'.
Imports L{agw.config}, L{agw.metering} and L{agw.decisions}.
"""

from agw.routing._azure import NoDeployment
from agw.routing._backend import OPENAI_HOST, BackendTarget, TrustRootError, read_trust_root
from agw.routing._context import GuardRunner, RouteContext
from agw.routing._errors import ErrorResource, client_gone, client_host, error_body, render_error
from agw.routing._headerlist import HeaderList, byte_pairs, text_pairs
from agw.routing._headers import (
    CREDENTIALS,
    FORWARDING,
    HOP_BY_HOP,
    KEY_HEADERS,
    KEY_PARAMETERS,
    agw_credentials,
    forwarded_query,
    guard_headers,
    RequestHeaderPolicy,
    response_header_pairs,
    upstream_headers,
)
from agw.routing._target import BadTarget, OriginTarget, normalise_path, parse_target
from agw.routing._tracker import ConnectionTracker
from agw.routing._tree import BindResource, RoutedRoute, WebRTCEndpoint, route_type_for, webrtc_endpoint

__all__ = [
    "CREDENTIALS", "FORWARDING", "HOP_BY_HOP", "KEY_HEADERS", "KEY_PARAMETERS", "OPENAI_HOST", "BackendTarget", "BadTarget",
    "BindResource", "ConnectionTracker", "ErrorResource", "GuardRunner", "HeaderList", "NoDeployment", "OriginTarget", "RouteContext",
    "RoutedRoute", "TrustRootError", "agw_credentials", "client_gone", "client_host",
    "error_body", "forwarded_query", "guard_headers", "normalise_path", "parse_target",
    "read_trust_root", "render_error", "RequestHeaderPolicy", "response_header_pairs", "byte_pairs", "route_type_for", "text_pairs", "upstream_headers", "WebRTCEndpoint", "webrtc_endpoint",
]
