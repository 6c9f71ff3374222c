"""
A route's C{policies}: the AI route types, the backend key and TLS, header
transformations, and client keys (C{apiKey}).
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from agw.config._model import (
    UNSERVED_ROUTE_TYPES,
    APIKeyMode,
    APIKeyPolicy,
    BackendTLS,
    Budget,
    BudgetUnit,
    ClientKey,
    KeyLocation,
    LocalRateLimit,
    Policies,
    RouteType,
    Secret,
)
from agw.config._calls_parser import CallsParser
from agw.config._guard_parser import GuardParser
from agw.config._guardrails import PromptGuard
from agw.config._parsing import kind_of
from agw.config._yamlsource import Path


# An HTTP header name (RFC 9110 token).
HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"


def key_digest(key: str) -> str:
    """The SHA-256 hex digest agw keeps of a client key (agentgateway's C{keyHash} is C{sha256:} and this)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()



_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """Whole seconds of a duration such as C{24h}, C{1h30m} or C{90s}; C{None} if it is not one."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return int(sum(int(number) * _SECONDS[unit] for number, unit in parts))


class PolicyParser(GuardParser, CallsParser):
    """Parses C{policies} (mixed into the config parser)."""

    def policies(self, value: Any, path: Path) -> Policies:
        policies = self.mapping(value, path, "policies")
        ai = self.mapping(policies.get("ai"), path + ("ai",), "aiPolicy")
        routes = ai.get("routes") or {}
        if not isinstance(routes, dict):
            raise self.fail(path + ("ai", "routes"), f"expected a mapping of path suffix to route type, got {kind_of(routes)}")
        ai_routes = []
        for suffix, kind in routes.items():
            try:
                route_type = RouteType(kind)
            except ValueError:
                choices = ", ".join(t.value for t in RouteType)
                raise self.fail(path + ("ai", "routes", suffix), f"unknown route type {kind!r} (one of {choices})") from None
            if route_type in UNSERVED_ROUTE_TYPES:
                raise self.fail(path + ("ai", "routes", suffix), f"route type {kind} is supported by agentgateway but not by agw yet")
            ai_routes.append((suffix, route_type))
        key = key_header = None
        if policies.get("backendAuth") is not None:
            key, key_header = self.backend_auth(policies["backendAuth"], path + ("backendAuth",))
        transformations = self.mapping(policies.get("transformations"), path + ("transformations",), "transformations")
        backend_tls = None
        if "backendTLS" in policies:
            tls_path = path + ("backendTLS",)
            tls = self.mapping(policies["backendTLS"], tls_path, "backendTLS")
            backend_tls = BackendTLS(
                root=self.string(tls.get("root"), tls_path + ("root",), optional=True),
                hostname=self.string(tls.get("hostname"), tls_path + ("hostname",), optional=True),
            )
        api_key = self.api_key(policies["apiKey"], path + ("apiKey",)) if "apiKey" in policies else None
        return Policies(
            ai_routes=tuple(ai_routes),
            backend_key=key,
            backend_key_header=key_header,
            backend_tls=backend_tls,
            api_key=api_key,
            rate_limits=self.items(policies.get("localRateLimit"), path + ("localRateLimit",), self.rate_limit),
            request_headers=self.header_transform(transformations.get("request"), path + ("transformations", "request")),
            prompt_guard=self.prompt_guard(ai["promptGuard"], path + ("ai", "promptGuard")) if "promptGuard" in ai else PromptGuard(),
            prompts=self.prompts(ai.get("prompts"), path + ("ai", "prompts")),
            defaults=self.body_fields(ai.get("defaults"), path + ("ai", "defaults")),
            overrides=self.body_fields(ai.get("overrides"), path + ("ai", "overrides")),
            model_aliases=self.model_aliases(ai.get("modelAliases"), path + ("ai", "modelAliases")),
            realtime_calls=self.realtime_calls(policies.get("realtimeCalls"), path + ("realtimeCalls",), api_key),
        )

    def backend_auth(self, value: Any, path: Path) -> tuple[Secret, tuple[str, str] | None]:
        """C{backendAuth}: the key, and the header it goes in if C{location} names one."""
        auth = self.mapping(value, path, "backendAuth")
        path = path + ("key",)
        if not isinstance(auth.get("key"), dict):
            return Secret(self.string(auth.get("key"), path)), None
        # agentgateway's BackendAuth::Key {value, location}.
        spec = self.mapping(auth["key"], path, "backendKey")
        key = Secret(self.string(spec.get("value"), path + ("value",)))
        if spec.get("location") is None:
            return key, None
        location = self.mapping(spec["location"], path + ("location",), "authLocation")
        header = self.mapping(location.get("header"), path + ("location", "header"), "authHeader")
        name = self.string(header.get("name"), path + ("location", "header", "name"))
        if not re.fullmatch(HEADER_NAME, name):
            raise self.fail(path + ("location", "header", "name"), f"not a header name: {name!r}")
        prefix = self.string(header.get("prefix", ""), path + ("location", "header", "prefix"))
        return key, (name.lower(), prefix)

    def api_key(self, value: Any, path: Path) -> APIKeyPolicy:
        spec = self.mapping(value, path, "apiKey")
        mode_text = self.string(spec.get("mode", "optional"), path + ("mode",))
        try:
            mode = APIKeyMode(mode_text.lower())
        except ValueError:
            raise self.fail(path + ("mode",), f"expected strict, optional or permissive, got {mode_text!r}") from None
        keys = self.items(spec.get("keys"), path + ("keys",), self.client_key, required=True)
        seen: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key.digest in seen:
                raise self.fail(path + ("keys", index), f"the same key as keys[{seen[key.digest]}]")
            seen[key.digest] = index
        location = self.key_location(spec["location"], path + ("location",)) if spec.get("location") is not None else None
        return APIKeyPolicy(keys=keys, mode=mode, location=location)

    def key_location(self, value: Any, path: Path) -> KeyLocation:
        """C{apiKey.location}: agentgateway's C{header} or C{queryParameter} (C{cookie}, C{expression}: not yet)."""
        spec = self.mapping(value, path, "apiKeyLocation")
        if len(spec) != 1:
            raise self.fail(path, "expected exactly one of header, queryParameter")
        if "queryParameter" in spec:
            parameter = self.mapping(spec["queryParameter"], path + ("queryParameter",), "queryParameter")
            name = self.string(parameter.get("name"), path + ("queryParameter", "name"))
            if not name or any(c in name for c in "&;=#?") or name != name.strip():
                raise self.fail(path + ("queryParameter", "name"), f"expected a parameter name, got {name!r}")
            return KeyLocation(query=name)
        header = self.mapping(spec["header"], path + ("header",), "authHeader")
        name = self.string(header.get("name"), path + ("header", "name"))
        if not re.fullmatch(HEADER_NAME, name):
            raise self.fail(path + ("header", "name"), f"not a header name: {name!r}")
        return KeyLocation(header=name.lower(), prefix=self.string(header.get("prefix", ""), path + ("header", "prefix")))

    def client_key(self, value: Any, path: Path, index: int) -> ClientKey:
        entry = self.mapping(value, path, "apiKeyEntry")
        if ("key" in entry) == ("keyHash" in entry):
            raise self.fail(path, "expected exactly one of key, keyHash")
        if "key" in entry:
            digest = key_digest(self.string(entry["key"], path + ("key",)))
        else:
            digest = self.key_hash(self.string(entry["keyHash"], path + ("keyHash",)), path + ("keyHash",))
        metadata = self.mapping(entry.get("metadata"), path + ("metadata",), "metadata", allowed=set(entry.get("metadata") or {}))
        models = self.items(entry.get("allowedModels"), path + ("allowedModels",), self.model_pattern)
        budgets = self.items(entry.get("budgets"), path + ("budgets",), self.budget)
        if budgets and metadata.get("name") is None:
            raise self.fail(path, "API keys with budgets must have a metadata.name")
        names = [budget.name for budget in budgets]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise self.fail(path + ("budgets", index, "name"), f"budget {name!r} is listed twice")
        allow_passthrough = entry.get("allowPassthrough", False)
        if not isinstance(allow_passthrough, bool):
            raise self.fail(path + ("allowPassthrough",), f"expected true or false, got {kind_of(allow_passthrough)}")
        return ClientKey(
            digest=digest, metadata=MappingProxyType(dict(metadata)), allowed_models=models, budgets=budgets,
            allow_passthrough=allow_passthrough,
        )

    def rate_limit(self, value: Any, path: Path, index: int) -> LocalRateLimit:
        spec = self.mapping(value, path, "localRateLimit")
        numbers = {}
        for name in ("maxTokens", "tokensPerFill"):
            number = spec.get(name)
            if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
                raise self.fail(path + (name,), f"expected a positive whole number, got {number!r}")
            numbers[name] = number
        interval_text = self.string(spec.get("fillInterval"), path + ("fillInterval",))
        interval = parse_duration(interval_text)
        if interval is None or interval <= 0:
            raise self.fail(path + ("fillInterval",), f"expected a duration such as 1s or 1m, got {interval_text!r}")
        kind = self.string(spec.get("type", "requests"), path + ("type",))
        if kind not in ("requests", "tokens"):
            raise self.fail(path + ("type",), f"expected requests or tokens, got {kind!r}")
        return LocalRateLimit(numbers["maxTokens"], numbers["tokensPerFill"], float(interval), kind)

    def budget(self, value: Any, path: Path, index: int) -> Budget:
        spec = self.mapping(value, path, "budget")
        limit = self.mapping(spec.get("limit"), path + ("limit",), "budgetLimit")
        unit_text = self.string(limit.get("unit"), path + ("limit", "unit"))
        try:
            unit = BudgetUnit(unit_text)
        except ValueError:
            raise self.fail(path + ("limit", "unit"), f"expected USD or Tokens, got {unit_text!r}") from None
        amount_value = limit.get("amount")
        try:
            amount = Decimal(str(amount_value))
        except (InvalidOperation, ValueError):
            amount = Decimal(-1)
        if isinstance(amount_value, bool) or not amount.is_finite() or amount < 0:
            raise self.fail(path + ("limit", "amount"), f"expected a non-negative amount, got {amount_value!r}")
        window = self.mapping(spec.get("window"), path + ("window",), "budgetWindow")
        seconds = parse_duration(self.string(window.get("rolling"), path + ("window", "rolling")))
        if seconds is None or seconds <= 0:
            raise self.fail(path + ("window", "rolling"), f"expected a duration such as 24h or 30m, got {window.get('rolling')!r}")
        action = self.string(spec.get("onBudgetExceeded", "Block"), path + ("onBudgetExceeded",))
        if action not in ("Block", "Audit"):
            raise self.fail(path + ("onBudgetExceeded",), f"expected Block or Audit, got {action!r}")
        return Budget(self.string(spec.get("name"), path + ("name",)), unit, amount, seconds, action == "Block")

    def key_hash(self, text: str, path: Path) -> str:
        if text.startswith(("$2a$", "$2b$", "$2y$")):
            raise self.fail(path, "bcrypt keyHash is supported by agentgateway but not by agw yet (use sha256:<hex>)")
        digest = text.removeprefix("sha256:")
        if digest == text:
            raise self.fail(path, "keyHash must use the sha256:<hex> format")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise self.fail(path, "sha256 keyHash must decode to 32 bytes")
        return digest.lower()

    def model_pattern(self, value: Any, path: Path, index: int) -> str:
        pattern = self.string(value, path)
        if pattern.count("*") > 1:
            raise self.fail(path, f"a model pattern may have one '*' at most, got {pattern!r}")
        return pattern
