"""
L{RouteContext}: what every forwarder and relay of one route shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred

from agw.config import ClientKey, Guard, Policies
from agw.decisions import GuardOutcome, Slot
from agw.decisions import RouteLimits
from agw.metering import (
    NO_ACCESS_LOG,
    NO_SPANS,
    AccessLog,
    Attribution,
    Attributor,
    GatewayMetrics,
    Governor,
    RouteLabels,
    SpanSink,
)
from agw.decisions import KeyCheck, presented_key
from agw.routing._backend import BackendTarget
from agw.routing._headers import agw_credentials, forwarded_query


class GuardRunner(Protocol):
    """
    Runs a guard list whose guards may call out (webhook, moderation):
    L{agw.http.GuardCalls}, one per gateway. A relay or forwarder calls
    C{check} without importing L{agw.http}.
    """

    def check(
        self, guards: tuple[Guard, ...], slots: list[Slot], phase: str, headers: Mapping[str, str],
    ) -> Deferred[GuardOutcome]:
        """Run C{guards} in order over C{slots}, masking in place, until one rejects (see L{agw.http.check_guards})."""


@frozen
class RouteContext:
    """
    One route as its forwarders and relays see it: the reactor they run on,
    the backend they send to, the route's policies, where they record
    (metrics under the route's labels, the access log), the model the
    backend replaces the client's with (C{provider.openAI.model}), and the
    client keys it accepts (C{apiKey}), if any.
    """

    reactor: Any  # IReactorTCP and IReactorTime
    target: BackendTarget
    policies: Policies
    metrics: GatewayMetrics
    labels: RouteLabels
    access_log: AccessLog = NO_ACCESS_LOG
    model_override: str | None = None
    # The route's apiKey policy, if it has one.
    keys: KeyCheck | None = None
    # The budgets of the gateway's client keys, if any have budgets.
    governor: Governor | None = None
    # The route's localRateLimit buckets, if it has any.
    limits: RouteLimits | None = None
    # Who a client key's caller is, as metrics and logs say it (config.metrics/logging.fields.add).
    attributor: Attributor | None = None
    # Where spans go (config.tracing).
    spans: SpanSink = NO_SPANS
    # Calls to guard backends (webhook, openAIModeration); the gateway's, if it has guards that call out.
    guard_calls: GuardRunner | None = None

    def attribute(self, key: ClientKey | None) -> Attribution:
        """The L{Attribution} of a caller with C{key} (C{None}: anonymous)."""
        if self.attributor is None:
            return self.metrics.anonymous
        return self.attributor(key.name, key.metadata) if key is not None else self.attributor.anonymous

    def upstream_query(self, query: str) -> str:
        """
        The client's C{query} as it goes upstream: without the client's
        credentials (C{api-key}, C{key}, C{apiKey.location}'s parameter)
        when they are agw's (L{agw.routing.forwarded_query}).
        """
        location = self.policies.api_key.location if self.policies.api_key is not None else None
        return forwarded_query(query, agw_credentials(self.policies), location.query if location is not None else None)

    def presented_key(self, header: Callable[[str], str | None], query: str, protocols: tuple[str, ...] = ()) -> str | None:
        """The client key a request presents where this route's C{apiKey.location} says (see L{presented_key})."""
        return presented_key(self.keys.location if self.keys is not None else None, header, query, protocols)
