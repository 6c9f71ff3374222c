"""
L{RouteContext}: what every forwarder and relay of one route shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred

from agw.config import APIKeyMode, ClientKey, Guard, Policies
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
from agw.decisions import CallTokens, Grant, KeyCheck, KeyRefused, is_token, presented_key
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
    # agw's client secrets (minted on Realtime routes, see docs/webrtc.md); the gateway's.
    tokens: CallTokens | None = None

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

    def identify(self, presented: str | None) -> tuple[ClientKey | None, Grant | None]:
        """
        Who presents C{presented}: a client key of the route's C{apiKey}
        policy, or an agw client secret minted on this route (with its
        L{Grant}: then the key that minted it, which must still be
        configured); raises L{KeyRefused} (401).
        """
        keys = self.keys
        if self.tokens is None or not is_token(presented):
            return (keys.authenticate(presented) if keys is not None else None), None
        grant = self.tokens.redeem(presented, self.labels.values())  # type: ignore[arg-type]
        key = keys.known(grant.key_digest) if keys is not None and grant.key_digest is not None else None
        if key is None and (grant.key_digest is not None or (keys is not None and keys.mode is APIKeyMode.STRICT)):
            raise KeyRefused(401, "the API key this client secret was minted with is no longer accepted", "invalid_api_key")
        return key, grant

    def caller(self, presented: str | None, model: str | None) -> tuple[ClientKey | None, Grant | None]:
        """
        L{identify}, and whether the caller may use C{model}: its key's
        C{allowedModels}, and for a client secret the model it pinned;
        raises L{KeyRefused} (401, 403).
        """
        key, grant = self.identify(presented)
        if grant is not None and model != grant.model:
            raise KeyRefused(403, f"this client secret is for model {grant.model!r} (ask for it by name)", "model_not_allowed")
        KeyCheck.authorize(key, model)
        return key, grant
