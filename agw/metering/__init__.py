"""
Metering: what was used, by whom, and where it is recorded. Pure usage
parsing (L{TokenUsage} from provider events and bodies), the accounting of
a Realtime session (L{RealtimeSession}) and of HTTP bodies (the watchers),
the metrics (L{GatewayMetrics}: the only place that knows metric names) and
the access log. Next: prices, budgets and limits. Imports nothing of agw
but L{agw.config}.
"""

from agw.metering._accesslog import (
    ACCESS_LOG_FORMATS,
    NO_ACCESS_LOG,
    AccessLog,
    CombinedAccessLog,
    peer_address,
    usage_fields,
)
from agw.metering._attribution import Attribution, Attributor
from agw.metering._bodies import JSONWatcher, SSEWatcher, UsageChunkRemover, UsageExtractor, UsageReport, Watcher
from agw.metering._budgets import Governor
from agw.metering._call_metrics import (
    ATTACHED, ATTACHING, BUDGET, CLIENT, ENDING, OPERATOR, PROVIDER, RECONNECTING, SHUTDOWN, SIDEBAND_LOST, UNSUPERVISED,
    CallMetrics,
)
from agw.metering._call_record import CallRecord
from agw.metering._client_events import client_event_id, client_event_type, client_event_types, sole_event_type
from agw.metering._reservation import NO_RESERVATION, Reservation, ReserveOptions
from agw.metering._catalog import (
    EXACT,
    FALLBACK_MODEL,
    MISSING,
    NO_CATALOG,
    UNPRICED,
    Catalog,
    CatalogError,
    Cost,
    Rates,
    catalog_for,
    default_catalog,
    parse_catalog,
    read_catalogs,
)
from agw.metering._http import HTTPExchange, guard_fields
from agw.metering._ledger import BudgetLedger, LedgerURLError, check_ledger_url
from agw.metering._metrics import OTHER_MODEL, UNKNOWN_MODEL, GatewayMetrics, ModelLabels, RouteLabels
from agw.metering._pricing import price_audio, price_tokens, split_cached
from agw.metering._recent import RecentCosts
from agw.metering._realtime import CLIENT_TO_UPSTREAM, TRANSCRIPTION, UPSTREAM_TO_CLIENT, RealtimeSession
from agw.metering._spans import NO_SPAN, NO_SPANS, Span, SpanSink, span_name
from agw.metering._spool import ChargeSpool, ledger_identity
from agw.metering._usage import (
    EVENT_HEAD,
    AudioDuration,
    TokenUsage,
    chat_completion_usage,
    decode_event,
    embeddings_usage,
    error_event_id,
    leading_event_type,
    might_carry_usage,
    realtime_response_usage,
    realtime_transcription_usage,
    response_id,
    response_model,
    responses_usage,
    session_model,
    session_transcription_model,
)

__all__ = [
    "ATTACHED", "ATTACHING", "BUDGET", "CLIENT", "ENDING", "OPERATOR", "PROVIDER", "RECONNECTING", "SHUTDOWN", "SIDEBAND_LOST",
    "UNSUPERVISED", "CallMetrics", "CallRecord",
    "Attribution", "Attributor", "BudgetLedger", "Governor", "LedgerURLError", "NO_RESERVATION",
    "Reservation", "ReserveOptions", "check_ledger_url", "ChargeSpool", "ledger_identity",
    "EXACT", "FALLBACK_MODEL", "MISSING", "NO_CATALOG", "UNPRICED", "Catalog", "CatalogError", "Cost", "Rates", "catalog_for",
    "default_catalog", "parse_catalog", "price_audio", "price_tokens", "read_catalogs", "split_cached",
    "ACCESS_LOG_FORMATS", "CLIENT_TO_UPSTREAM", "NO_ACCESS_LOG", "NO_SPAN", "NO_SPANS", "Span", "SpanSink", "span_name", "OTHER_MODEL", "TRANSCRIPTION", "UNKNOWN_MODEL", "UPSTREAM_TO_CLIENT",
    "AccessLog", "AudioDuration", "CombinedAccessLog", "GatewayMetrics", "HTTPExchange", "guard_fields", "JSONWatcher", "ModelLabels", "RealtimeSession", "RecentCosts", "RouteLabels",
    "SSEWatcher", "TokenUsage", "UsageChunkRemover", "UsageExtractor", "UsageReport", "Watcher",
    "chat_completion_usage", "client_event_id", "client_event_type", "client_event_types", "decode_event", "embeddings_usage",
    "error_event_id", "EVENT_HEAD", "leading_event_type", "might_carry_usage", "peer_address", "realtime_response_usage", "realtime_transcription_usage", "response_id",
    "response_model", "responses_usage", "session_model", "sole_event_type", "session_transcription_model", "usage_fields",
]
