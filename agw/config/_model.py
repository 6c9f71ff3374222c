"""
The typed configuration: frozen attrs classes mirroring agentgateway's
camelCase YAML, with no behaviour beyond what the data itself implies.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

from attrs import field, frozen

from agw.config._azure import AzureProvider
from agw.config._calls import RealtimeCalls
from agw.config._guardrails import PromptGuard, Prompts
from agw.config._secret import Secret
from agw.config._tls import ServerTLS

# Sizes in options and limits are in bytes.
MiB = 1024 * 1024


class RouteType(str, Enum):
    """What a request on an AI backend is, chosen by C{policies.ai.routes}."""

    COMPLETIONS = "completions"
    MESSAGES = "messages"
    MODELS = "models"
    PASSTHROUGH = "passthrough"
    DETECT = "detect"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    REALTIME = "realtime"


# Route types agentgateway has and agw does not serve: refused at load, never answered 501 at run time.
UNSERVED_ROUTE_TYPES = frozenset({RouteType.MESSAGES, RouteType.DETECT})


@frozen
class PathMatch:
    """One of C{exact}, C{pathPrefix} or C{regex}."""

    kind: str
    value: str


@frozen
class RouteMatch:
    """A C{matches[]} entry; C{path=None} matches every path."""

    path: PathMatch | None = None


@frozen
class AIBackend:
    """An C{ai:} backend: C{provider} C{openAI}, or C{azure} with its resource in C{azure}."""

    name: str
    provider: str = "openAI"
    model: str | None = None
    azure: AzureProvider | None = None
    host_override: str | None = None
    path_override: str | None = None
    path_prefix: str | None = None


@frozen
class HeaderTransform:
    """C{transformations.request}: literal header values only (no CEL)."""

    remove: tuple[str, ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()


@frozen
class BackendTLS:
    """
    C{policies.backendTLS}: TLS to the backend (with C{hostOverride} too),
    verified against C{root} (a PEM file; the system's roots when unset)
    for the name C{hostname} (the backend's host when unset).
    """

    root: str | None = None
    hostname: str | None = None


class APIKeyMode(str, Enum):
    """C{apiKey.mode}, as agentgateway: what happens to a request without a valid key."""

    STRICT = "strict"  # refused (401) without a valid key
    OPTIONAL = "optional"  # a key, if given, must be valid (agentgateway's default)
    PERMISSIVE = "permissive"  # a valid key identifies the caller; others pass anonymously


class BudgetUnit(str, Enum):
    """What a budget counts."""

    USD = "USD"  # cost, from the model catalog
    TOKENS = "Tokens"  # input plus output tokens


@frozen
class Budget:
    """
    A C{keys[].budgets[]} entry, as agentgateway: at most C{amount} of
    C{unit} per fixed window of C{window_seconds} (aligned to the Unix
    epoch); C{block} refuses past it (C{onBudgetExceeded: Block}),
    otherwise it is only reported (C{Audit}).
    """

    name: str
    unit: BudgetUnit
    amount: Decimal
    window_seconds: int
    block: bool = True


@frozen
class ClientKey:
    """
    One C{apiKey.keys[]} entry. Only the SHA-256 digest of the key is kept
    (a plaintext C{key} is hashed when the config is read). C{metadata} is
    the operator's free map; C{name} identifies the consumer.
    C{allowed_models}: exact names or patterns with one C{*}; empty allows all.
    C{allow_passthrough} (agw's own C{allowPassthrough}): a key with allowed
    models or budgets may still use paths forwarded unread (passthrough),
    where neither is checked nor its tokens counted.
    """

    digest: str = field(repr=False)
    metadata: Mapping[str, Any] = field(factory=dict, hash=False)
    allowed_models: tuple[str, ...] = ()
    budgets: tuple[Budget, ...] = ()
    allow_passthrough: bool = False

    @property
    def restricted(self) -> bool:
        """Whether the key has allowed models or budgets: what a path forwarded unread cannot enforce."""
        return bool(self.allowed_models or self.budgets)

    @property
    def name(self) -> str | None:
        """The consumer's name (C{metadata.name}), if the operator gave one."""
        name = self.metadata.get("name")
        return str(name) if name is not None else None


@frozen
class KeyLocation:
    """
    C{apiKey.location}: where a client key is read, a C{header} (lower-case
    name) after C{prefix} (matched in any case), or a C{query} parameter.
    """

    header: str | None = None
    prefix: str = ""
    query: str | None = None


@frozen
class APIKeyPolicy:
    """
    A route's C{policies.apiKey}: the client keys agw accepts (the client's
    own, not the backend's); C{location} C{None} is agentgateway's default,
    C{Authorization: Bearer <key>}.
    """

    keys: tuple[ClientKey, ...] = ()
    mode: APIKeyMode = APIKeyMode.OPTIONAL
    location: KeyLocation | None = None


@frozen
class LocalRateLimit:
    """
    A C{localRateLimit} entry, as agentgateway: a token bucket of
    C{max_tokens} that starts full and gains C{tokens_per_fill} every
    C{fill_interval} seconds; C{kind} C{requests} spends one per request
    (each HTTP request, each Realtime C{response.create}), C{tokens} spends
    each response's input plus output tokens.
    """

    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    kind: str = "requests"


@frozen
class Policies:
    """A route's C{policies}."""

    # Path suffix -> route type, in file order; lookup orders by length.
    ai_routes: tuple[tuple[str, RouteType], ...] = ()
    backend_key: Secret | None = None
    # backendAuth.key.location: (header name, prefix); None: the provider's own (see agw.routing).
    backend_key_header: tuple[str, str] | None = None
    request_headers: HeaderTransform = HeaderTransform()
    backend_tls: BackendTLS | None = None
    api_key: APIKeyPolicy | None = None
    rate_limits: tuple[LocalRateLimit, ...] = ()
    # policies.ai.promptGuard (request and response guards, in order) and policies.ai.prompts.
    prompt_guard: PromptGuard = PromptGuard()
    prompts: Prompts = Prompts()
    # policies.ai.defaults / overrides: (body field, its value as JSON text; decoded afresh per request).
    defaults: tuple[tuple[str, str], ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()
    # policies.ai.modelAliases: (requested model or pattern with '*', model sent), in file order.
    model_aliases: tuple[tuple[str, str], ...] = ()
    realtime_calls: RealtimeCalls = RealtimeCalls()  # policies.realtimeCalls (agw's own): WebRTC calls


@frozen
class Route:
    """A C{routes[]} entry. C{name} is the metric label (default C{routeN})."""

    name: str
    matches: tuple[RouteMatch, ...]
    backends: tuple[AIBackend, ...]
    policies: Policies = Policies()


@frozen
class Listener:
    """
    A C{listeners[]} entry. C{name} is the metric label (default
    C{listenerN}); C{protocol} C{HTTP}, or C{HTTPS} with its C{tls}.
    """

    name: str
    routes: tuple[Route, ...]
    hostname: str | None = None
    protocol: str = "HTTP"
    tls: ServerTLS | None = None


@frozen
class Bind:
    """A C{binds[]} entry: one listening port."""

    port: int
    listeners: tuple[Listener, ...]


@frozen
class Address:
    """A C{host:port} to listen on; C{host} is C{::} for C{[::]}."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """C{host:port} as a URL writes it (an IPv6 host in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@frozen
class TracingConfig:
    """
    agentgateway's C{config.tracing}: spans exported over OTLP/HTTP to
    C{endpoint}. C{random_sampling} is the share of requests without a
    C{traceparent} that start a trace (agentgateway's default: none);
    C{client_sampling} the share of those with one that are traced (default: all).
    """

    endpoint: str
    headers: tuple[tuple[str, Secret], ...] = ()  # often credentials: never printed
    path: str = "/v1/traces"
    random_sampling: float = 0.0
    client_sampling: float = 1.0

    @property
    def url(self) -> str:
        return self.endpoint.rstrip("/") + self.path


@frozen
class GatewayConfig:
    """The whole file."""

    binds: tuple[Bind, ...]
    stats_addr: Address = Address("::", 15020)
    readiness_addr: Address = Address("::", 15021)
    admin_addr: Address = Address("localhost", 15000)
    # agw's own: gateway processes sharing the binds (0: one per CPU).
    workers: int = 1
    # config.modelCatalog's files, in order (None: not set; then MODEL_CATALOG_PATHS or agw's default).
    model_catalog: tuple[str, ...] | None = None
    # config.database.url: where budgets are kept (sqlite://PATH or postgresql://...).
    database_url: Secret | None = None
    # config.metrics.fields.add / config.logging.fields.add: (label or field, apiKey metadata field).
    metric_fields: tuple[tuple[str, str], ...] = ()
    log_fields: tuple[tuple[str, str], ...] = ()
    # config.tracing (None: no spans).
    tracing: TracingConfig | None = None
