"""
agentgateway's config format to L{GatewayConfig}: strict, with errors that
name the path and line. Pure parsing; L{load_config} only reads the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from agw.config._model import (
    Address,
    AIBackend,
    Bind,
    Budget,
    ClientKey,
    GatewayConfig,
    PathMatch,
    Route,
    RouteMatch,
    Secret,
    TracingConfig,
)
from agw.config._parsing import ConfigError, format_path, kind_of
from agw.config._listener_parser import ListenerParser
from agw.config._policies import key_digest
from agw.config._providers import ProviderParser
from agw.config._yamlsource import Path, SourceError, load_yaml

_API_KEY_FIELD = re.compile(r"apiKey\.([A-Za-z_][A-Za-z0-9_]*)")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# Labels agw's metrics already have.
_RESERVED_LABELS = frozenset({
    "consumer", "component", "direction", "gen_ai_token_type", "gen_ai_token_modality", "gen_ai_operation_name",
    "gen_ai_system", "gen_ai_request_model", "gen_ai_response_model", "bind", "gateway", "listener", "route",
    "route_rule", "status", "method",
})

_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})\Z")

__all__ = ["ConfigError", "key_digest", "load_config", "parse_config"]


def load_config(filename: str, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and parse C{filename}; raise L{ConfigError} if it cannot be used."""
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read {filename}: {getattr(e, 'strerror', None) or e}") from None
    return parse_config(text, os.environ if environ is None else environ, source=filename)


def parse_config(text: str, environ: Mapping[str, str], source: str | None = None) -> GatewayConfig:
    """Parse config C{text}, expanding variables from C{environ}."""
    try:
        data, lines = load_yaml(text, environ)
    except SourceError as e:
        raise ConfigError(format_path(e.path), e.message, e.line, source) from None
    return _Parser(lines, source).gateway(data)


def api_keys(binds: tuple[Bind, ...]) -> Iterator[tuple[Path, ClientKey]]:
    """Every C{apiKey.keys[]} entry of the config, with its path."""
    for b, bind in enumerate(binds):
        for l, listener in enumerate(bind.listeners):
            for r, route in enumerate(listener.routes):
                for k, key in enumerate(route.policies.api_key.keys if route.policies.api_key else ()):
                    yield ("binds", b, "listeners", l, "routes", r, "policies", "apiKey", "keys", k), key


class _Parser(ListenerParser, ProviderParser):
    """The whole file, part by part (listeners in L{ListenerParser}, policies in L{PolicyParser})."""

    def gateway(self, data: Any) -> GatewayConfig:
        top = self.mapping(data, (), "top")
        binds = self.items(top.get("binds"), ("binds",), self.bind, required=True)
        if not binds:
            raise self.fail(("binds",), "at least one bind is required")
        ports = [b.port for b in binds]
        for i, port in enumerate(ports):
            if port != 0 and port in ports[:i]:
                raise self.fail(("binds", i, "port"), f"port {port} is bound twice")
        settings = self.mapping(top.get("config"), ("config",), "config")
        workers = settings.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise self.fail(("config", "workers"), f"expected a number of processes (0: one per CPU), got {workers!r}")
        self.shared_budgets(binds)
        defaults = GatewayConfig(binds=binds)
        return GatewayConfig(
            binds=binds,
            stats_addr=self.address(settings.get("statsAddr"), ("config", "statsAddr"), defaults.stats_addr),
            readiness_addr=self.address(
                settings.get("readinessAddr"), ("config", "readinessAddr"), defaults.readiness_addr
            ),
            admin_addr=self.address(settings.get("adminAddr"), ("config", "adminAddr"), defaults.admin_addr),
            workers=workers,
            model_catalog=self.model_catalog(settings["modelCatalog"]) if "modelCatalog" in settings else None,
            database_url=self.database(settings.get("database"), binds),
            metric_fields=self.fields(settings.get("metrics"), ("config", "metrics"), "metrics", _LABEL),
            log_fields=self.fields(settings.get("logging"), ("config", "logging"), "logging", _FIELD),
            tracing=self.tracing(settings["tracing"]) if "tracing" in settings else None,
        )

    def tracing(self, value: Any) -> TracingConfig:
        path: Path = ("config", "tracing")
        spec = self.mapping(value, path, "tracing")
        endpoint = self.string(spec.get("otlpEndpoint"), path + ("otlpEndpoint",))
        if not re.match(r"https?://[^/]+", endpoint):
            raise self.fail(path + ("otlpEndpoint",), f"expected an http:// or https:// URL, got {endpoint!r}")
        protocol = self.string(spec.get("otlpProtocol", "http"), path + ("otlpProtocol",))
        if protocol != "http":
            raise self.fail(path + ("otlpProtocol",), f"otlpProtocol {protocol} is supported by agentgateway but not by agw yet (use http)")
        headers = self.mapping(spec.get("headers"), path + ("headers",), "headers", allowed=set(spec.get("headers") or {}))
        tracing_path = self.string(spec.get("path", "/v1/traces"), path + ("path",))
        if not tracing_path.startswith("/"):
            raise self.fail(path + ("path",), f"a path must start with '/', got {tracing_path!r}")
        return TracingConfig(
            endpoint=endpoint,
            headers=tuple((str(name), Secret(self.string(text, path + ("headers", name)))) for name, text in headers.items()),
            path=tracing_path,
            random_sampling=self.share(spec.get("randomSampling", False), path + ("randomSampling",)),
            client_sampling=self.share(spec.get("clientSampling", True), path + ("clientSampling",)),
        )

    def share(self, value: Any, path: Path) -> float:
        """agentgateway's sampling value: true/false or a share 0.0-1.0 (also as a string); CEL is not supported."""
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if isinstance(value, str) and value.strip() in ("true", "false"):
            return 1.0 if value.strip() == "true" else 0.0
        try:
            share = float(value)
        except (TypeError, ValueError):
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise self.fail(path, f"expected true, false or a share between 0.0 and 1.0 (CEL expressions are not supported by agw yet), got {value!r}")
        return share

    def database(self, value: Any, binds: tuple[Bind, ...]) -> Secret | None:
        path: Path = ("config", "database")
        url = None
        if value is not None:
            spec = self.mapping(value, path, "database")
            url = self.string(spec.get("url"), path + ("url",))
            scheme = url.partition("://")[0]
            if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in url:
                raise self.fail(path + ("url",), "expected sqlite://PATH or postgresql://USER@HOST/DB")
        if url is None:
            for where, key in api_keys(binds):
                if key.budgets:
                    raise self.fail(where[:-2], "API key budgets require config.database to be configured")
        return Secret(url) if url is not None else None

    def shared_budgets(self, binds: tuple[Bind, ...]) -> None:
        """
        Budgets are kept per consumer (C{metadata.name}) across the whole
        config: every key of a name must list the same budgets (old and new
        key of a rotation may), or some keys would silently spend budgets
        other than their own.
        """
        first: dict[str, tuple[Path, frozenset[Budget]]] = {}
        for where, key in api_keys(binds):
            if key.name is None:
                continue
            budgets = frozenset(key.budgets)  # order does not matter: names are unique per key
            seen_where, seen = first.setdefault(key.name, (where, budgets))
            if seen != budgets:
                raise self.fail(where, (
                    f"metadata.name {key.name!r} is also at {format_path(seen_where)} with other budgets "
                    "(keys of one consumer share its budgets, so each must list the same ones)"
                ))

    def fields(self, value: Any, path: Path, kind: str, name_pattern: re.Pattern[str]) -> tuple[tuple[str, str], ...]:
        """C{metrics}/C{logging}: C{fields.add}, a map of name to C{apiKey.<metadata field>}."""
        section = self.mapping(value, path, kind)
        fields = self.mapping(section.get("fields"), path + ("fields",), "fields")
        add = fields.get("add") or {}
        if not isinstance(add, dict):
            raise self.fail(path + ("fields", "add"), f"expected a mapping of name to expression, got {kind_of(add)}")
        result = []
        for name, expression in add.items():
            where = path + ("fields", "add", name)
            if not isinstance(name, str) or not name_pattern.fullmatch(name) or name in _RESERVED_LABELS:
                raise self.fail(where, f"{name!r} cannot be used as a name here")
            match = _API_KEY_FIELD.fullmatch(self.string(expression, where).strip())
            if match is None or match.group(1) == "key":
                raise self.fail(where, "agw supports apiKey.<metadata field> expressions only (agentgateway's CEL is not supported yet)")
            result.append((name, match.group(1)))
        return tuple(result)

    def model_catalog(self, value: Any) -> tuple[str, ...]:
        path = ("config", "modelCatalog")

        def entry(item: Any, item_path: Path, index: int) -> str:
            return self.string(self.mapping(item, item_path, "modelCatalogEntry").get("file"), item_path + ("file",))

        return self.items(value, path, entry, required=True)

    def address(self, value: Any, path: Path, default: Address) -> Address:
        if value is None:
            return default
        match = _ADDRESS.match(self.string(value, path))
        if not match or int(match.group("port")) > 65535:
            raise self.fail(path, f"expected host:port (e.g. [::]:15020), got {value!r}")
        host = match.group("v6") or match.group("host") or "::"
        return Address(host, int(match.group("port")))

    def bind(self, value: Any, path: Path, index: int) -> Bind:
        bind = self.mapping(value, path, "bind")
        port = bind.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # e.g. port: $PORT
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise self.fail(path + ("port",), f"expected a port number 0-65535, got {port!r}")
        listeners = self.items(bind.get("listeners"), path + ("listeners",), self.listener)
        self.bind_listeners(listeners, path + ("listeners",))
        return Bind(port=port, listeners=listeners)

    def route(self, value: Any, path: Path, index: int) -> Route:
        route = self.mapping(value, path, "route")
        backends = self.items(route.get("backends"), path + ("backends",), self.backend)
        if len(backends) > 1:
            raise self.fail(path + ("backends",), "more than one backend per route is not supported by agw yet")
        return Route(
            name=self.string(route.get("name", f"route{index}"), path + ("name",)),
            matches=self.items(route.get("matches"), path + ("matches",), self.match),
            backends=backends,
            policies=self.policies(route.get("policies"), path + ("policies",)),
        )

    def match(self, value: Any, path: Path, index: int) -> RouteMatch:
        match = self.mapping(value, path, "match")
        if match.get("path") is None:
            return RouteMatch()
        path = path + ("path",)
        spec = self.mapping(match["path"], path, "path")
        if len(spec) != 1:
            raise self.fail(path, "expected exactly one of exact, pathPrefix, regex")
        ((kind, text),) = spec.items()
        text = self.string(text, path + (kind,))
        if kind == "regex":
            try:
                re.compile(text)
            except re.error as e:
                raise self.fail(path + (kind,), f"invalid regex: {e}") from None
        elif not text.startswith("/"):
            raise self.fail(path + (kind,), f"a path must start with '/', got {text!r}")
        return RouteMatch(PathMatch(kind, text))

    def backend(self, value: Any, path: Path, index: int) -> AIBackend:
        backend = self.mapping(value, path, "backend")
        if "ai" not in backend:
            raise self.fail(path, "expected an ai: backend (other backend kinds are not supported by agw yet)")
        path = path + ("ai",)
        ai = self.mapping(backend["ai"], path, "ai")
        provider, model, azure = self.provider(ai.get("provider"), path + ("provider",))
        host_override = self.string(ai.get("hostOverride"), path + ("hostOverride",), optional=True)
        if host_override is not None and not _ADDRESS.match(host_override):
            raise self.fail(path + ("hostOverride",), f"expected host:port, got {host_override!r}")
        return AIBackend(
            name=self.string(ai.get("name"), path + ("name",)),
            provider=provider,
            model=model,
            azure=azure,
            host_override=host_override,
            path_override=self.string(ai.get("pathOverride"), path + ("pathOverride",), optional=True),
            path_prefix=self.string(ai.get("pathPrefix"), path + ("pathPrefix",), optional=True),
        )
