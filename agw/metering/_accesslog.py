"""
The access log: one line for each HTTP request, each Realtime response and
each Realtime session end. JSON by default, with agentgateway's field names
(C{http.method}, C{http.path}, C{http.status}, C{src.addr}, C{duration})
and OpenTelemetry's C{gen_ai.*}; or NCSA combined lines for tools that read
web server logs. It carries no headers and no query strings, so no
credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.internet.interfaces import IAddress

from agw.config import Address
from agw.metering._catalog import Cost
from agw.metering._metrics import ModelLabels, RouteLabels
from agw.metering._usage import TokenUsage


def usage_fields(usage: TokenUsage | None) -> dict[str, Any]:
    """C{gen_ai.usage.*} fields for C{usage}, by type and modality."""
    if usage is None:
        return {}
    fields: dict[str, Any] = {"gen_ai.usage.input_tokens": usage.input, "gen_ai.usage.output_tokens": usage.output}
    if usage.cached_input is not None:
        fields["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input
    for prefix, details in (("input", usage.input_by_modality), ("output", usage.output_by_modality), ("cache_read", usage.cached_by_modality)):
        for modality, tokens in details:
            fields[f"agw.usage.{prefix}.{modality}_tokens"] = tokens
    return fields


def cost_fields(cost: Cost | None) -> dict[str, Any]:
    """
    agentgateway's C{agw.ai.usage.cost.total} (0 when unpriced), agw's lookup
    status and, only when the cost is the C{"*"} fallback's, C{agw.ai.usage.cost.fallback: true}.
    """
    if cost is None:
        return {}
    fields: dict[str, Any] = {"agw.ai.usage.cost.total": float(cost.total), "agw.ai.usage.cost.status": cost.status}
    if cost.fallback:
        fields["agw.ai.usage.cost.fallback"] = True
    return fields


def model_fields(models: ModelLabels | None) -> dict[str, Any]:
    """OpenTelemetry's C{gen_ai.*} names of the operation, provider and models (nothing for C{None})."""
    if models is None:
        return {}
    return {
        "gen_ai.operation.name": models.operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": models.request_model,
        "gen_ai.response.model": models.response_model,
    }


def peer_address(peer: IAddress | None) -> str | None:
    """agentgateway's C{src.addr}: C{host:port}, IPv6 hosts in brackets; C{None} for other transports."""
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None or port is None:
        return None
    return Address(host, port).authority


def duration_fields(seconds: float) -> dict[str, Any]:
    """agentgateway's C{duration} (whole milliseconds, C{"12ms"}) and agw's precise C{duration_s}."""
    return {"duration": f"{int(seconds * 1000)}ms", "duration_s": round(seconds, 6)}


class AccessLog:
    """
    Writes records to C{stream} (nothing when C{stream} is C{None}); every
    record also carries C{fields} (a worker's number, say).
    """

    def __init__(
        self, stream: IO[str] | None, clock: Callable[[], float] = time.time, fields: Mapping[str, Any] | None = None,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._fields = dict(fields or {})

    @property
    def enabled(self) -> bool:
        """Whether records are written (a caller may skip building them)."""
        return self._stream is not None

    def emit(self, event: str, route: RouteLabels, models: ModelLabels | None = None, **fields: Any) -> None:
        """One line: C{event}, the time, the route, the models, then C{fields}."""
        if self._stream is None:
            return
        record: dict[str, Any] = {"event": event, "time": round(self._clock(), 6), "route": route.route, "listener": route.listener, "bind": route.bind}
        record.update(model_fields(models))
        record.update(self._fields)
        record.update(fields)
        line = self.format(record)
        if line is not None:
            self._stream.write(line)
            self._stream.flush()

    def format(self, record: dict[str, Any]) -> str | None:
        """One record as a line (with its newline), or C{None} to skip it."""
        return json.dumps(record, separators=(",", ":")) + "\n"


class CombinedAccessLog(AccessLog):
    """
    NCSA combined lines, for tools that read web server logs: one per HTTP
    request and one per Realtime session (its upgrade request, logged when
    it ends, with status 101). Realtime responses have no HTTP request of
    their own, so they are in the JSON log only. The user field is the
    consumer (the client key's name); referer and user agent are not kept.
    """

    def format(self, record: dict[str, Any]) -> str | None:
        status = {"http": record.get("http.status"), "realtime.session": 101}.get(record["event"])
        if status is None:
            return None
        when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(record["time"]))
        # json.dumps escapes quotes and control characters a hostile path may hold.
        request = json.dumps(f"{record.get('http.method', 'GET')} {record.get('http.path', '-')} HTTP/1.1")
        return f"{record.get('src.addr') or '-'} - {_token(record.get('agw.consumer'))} [{when}] {request} {status} - \"-\" \"-\"\n"


def _token(value: Any) -> str:
    """A user field without spaces or quotes (C{-} when empty)."""
    text = json.dumps(value)[1:-1] if isinstance(value, str) else ""
    return text.replace(" ", "%20").replace('\\"', "%22") or "-"


#: The formats of C{twistd agw --access-log}; C{off} writes nothing.
ACCESS_LOG_FORMATS = {"json": AccessLog, "combined": CombinedAccessLog}

NO_ACCESS_LOG = AccessLog(None)
