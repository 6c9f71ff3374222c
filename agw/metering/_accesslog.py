"""
The access log: one JSON object per line for each HTTP request, each
Realtime response and each Realtime session end, with OpenTelemetry
C{gen_ai.*} field names. It carries no headers, so no credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

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
    """agentgateway's C{agw.ai.usage.cost.total} (0 when unpriced), and agw's lookup status."""
    if cost is None:
        return {}
    return {"agw.ai.usage.cost.total": float(cost.total), "agw.ai.usage.cost.status": cost.status}


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

    def emit(self, event: str, route: RouteLabels, models: ModelLabels | None = None, **fields: Any) -> None:
        """One line: C{event}, the time, the route, the models, then C{fields}."""
        if self._stream is None:
            return
        record: dict[str, Any] = {"event": event, "time": round(self._clock(), 6), "route": route.route, "listener": route.listener, "bind": route.bind}
        if models is not None:
            record.update({
                "gen_ai.operation.name": models.operation,
                "gen_ai.system": "openai",
                "gen_ai.request.model": models.request_model,
                "gen_ai.response.model": models.response_model,
            })
        record.update(self._fields)
        record.update(fields)
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()


NO_ACCESS_LOG = AccessLog(None)
