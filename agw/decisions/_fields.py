"""
C{policies.ai.overrides}, C{defaults} and C{modelAliases} on a parsed
request body, in agentgateway's order: overrides always set, defaults
set when absent, then the model's alias (exact names first, then
wildcard patterns, longest first).
"""

from __future__ import annotations

import json
import re
from typing import Any

from agw.config import Policies, RouteType


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def resolve_alias(model: str, aliases: tuple[tuple[str, str], ...]) -> str | None:
    """The model C{aliases} send for C{model}, or C{None} when none applies."""
    for name, target in aliases:
        if "*" not in name and name == model:
            return target
    patterns = sorted((item for item in aliases if "*" in item[0]), key=lambda item: -len(item[0]))  # stable: file order on ties
    for name, target in patterns:
        if _wildcard(name).fullmatch(model):
            return target
    return None


def apply_fields(body: dict[str, Any], policies: Policies) -> bool:
    """Apply overrides, defaults and the model alias to C{body}; whether it changed."""
    changed = False
    for name, value in policies.overrides:
        body[name] = json.loads(value)  # decoded afresh: the body may be changed later, the config never
        changed = True
    for name, value in policies.defaults:
        if name not in body:
            body[name] = json.loads(value)
            changed = True
    model = body.get("model")
    if policies.model_aliases and isinstance(model, str):
        target = resolve_alias(model, policies.model_aliases)
        if target is not None and target != model:
            body["model"] = target
            changed = True
    return changed


# Route types whose requests the guards read (HTTP completions and responses, Realtime events).
GUARDED_TYPES = frozenset({RouteType.COMPLETIONS, RouteType.RESPONSES, RouteType.REALTIME})


def unguarded_types(policies: Policies) -> list[str]:
    """
    The route types of a route with guards that those guards do not read
    (embeddings, passthrough...), for a warning: an operator must not
    believe them guarded. Empty without guards.
    """
    if not policies.prompt_guard:
        return []
    types = {route_type for _, route_type in policies.ai_routes} or {RouteType.COMPLETIONS}
    return sorted(route_type.value for route_type in types - GUARDED_TYPES)


def unguarded_streams(policies: Policies) -> bool:
    """
    Whether a route's response guards leave its streamed answers alone
    (C{promptGuard.streaming} Disabled, agentgateway's default), for a
    warning: they then read JSON answers only.
    """
    guard = policies.prompt_guard
    return bool(guard.response) and not guard.streaming
