"""
agw's configuration: agentgateway's YAML format parsed into frozen attrs
classes. No Twisted, no I/O beyond reading the file.
"""

from agw.config._azure import AzureProvider, AzureResourceType
from agw.config._calls import MAX_SECRET_SECONDS, MIN_SECRET_SECONDS, RealtimeCalls, SIPCalls, SIPLine, signing_key
from agw.config._guardrails import (
    DEFAULT_REJECTION,
    DEFAULT_SCOPE,
    MODERATION_URL,
    Builtin,
    FailureMode,
    Guard,
    GuardAction,
    HeaderMatch,
    Moderation,
    PromptGuard,
    PromptMessage,
    Prompts,
    RegexGuard,
    RegexRule,
    Rejection,
    Scope,
    Webhook,
)
from agw.config._load import ConfigError, load_config, parse_config
from agw.config._model import (
    Address,
    AIBackend,
    APIKeyMode,
    APIKeyPolicy,
    BackendTLS,
    Bind,
    Budget,
    BudgetUnit,
    ClientKey,
    GatewayConfig,
    HeaderTransform,
    KeyLocation,
    Listener,
    LocalRateLimit,
    MiB,
    PathMatch,
    Policies,
    Route,
    RouteMatch,
    RouteType,
    Secret,
    TracingConfig,
)
from agw.config._tls import ServerTLS, TLSVersion

__all__ = [
    "MAX_SECRET_SECONDS", "MIN_SECRET_SECONDS", "RealtimeCalls", "SIPCalls", "SIPLine", "signing_key",
    "DEFAULT_REJECTION", "DEFAULT_SCOPE", "MODERATION_URL", "Builtin", "FailureMode", "Guard", "GuardAction", "HeaderMatch",
    "Moderation", "PromptGuard", "PromptMessage", "Prompts", "RegexGuard", "RegexRule", "Rejection", "Scope", "Webhook",
    "AIBackend", "APIKeyMode", "AzureProvider", "AzureResourceType", "APIKeyPolicy", "Address", "BackendTLS", "Bind", "Budget", "BudgetUnit",
    "ClientKey", "ConfigError", "GatewayConfig", "HeaderTransform", "KeyLocation", "Listener", "LocalRateLimit", "MiB", "PathMatch", "Policies",
    "Route", "RouteMatch", "RouteType", "Secret", "ServerTLS", "TLSVersion", "TracingConfig", "load_config", "parse_config",
]
