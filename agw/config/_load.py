"""
agentgateway's config format to L{GatewayConfig}: strict, with errors that
name the path and line. Pure parsing; L{load_config} only reads the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agw.config._model import (
    Address,
    AIBackend,
    BackendTLS,
    Bind,
    GatewayConfig,
    HeaderTransform,
    Listener,
    PathMatch,
    Policies,
    Route,
    RouteMatch,
    RouteType,
    Secret,
)
from agw.config._unsupported import UNSUPPORTED
from agw.config._yamlsource import Path, SourceError, load_yaml

T = TypeVar("T")

# Route types agentgateway has and agw does not serve: refused at load, never answered 501 at run time.
_UNSERVED_ROUTE_TYPES = frozenset({RouteType.MESSAGES, RouteType.DETECT})

_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})\Z")


class ConfigError(Exception):
    """
    The config is unusable. C{str()} is one line naming the path and, where
    known, the YAML line: C{binds[0].port: expected an integer (line 3)}.
    """

    def __init__(self, path: str, message: str, line: int | None = None, source: str | None = None) -> None:
        super().__init__(path, message, line, source)
        self.path = path
        self.message = message
        self.line = line
        self.source = source

    def __str__(self) -> str:
        where = self.path or "config"
        suffix = ""
        if self.line is not None:
            suffix = f" ({self.source}, line {self.line})" if self.source else f" (line {self.line})"
        return f"{where}: {self.message}{suffix}"


def format_path(path: Path) -> str:
    """C{("binds", 0, "port")} -> C{binds[0].port}."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


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


class _Parser:
    def __init__(self, lines: dict[Path, int], source: str | None) -> None:
        self._lines = lines
        self._source = source

    def fail(self, path: Path, message: str) -> ConfigError:
        line = None
        for depth in range(len(path), -1, -1):
            line = self._lines.get(path[:depth])
            if line is not None:
                break
        return ConfigError(format_path(path), message, line, self._source)

    def mapping(self, value: Any, path: Path, allowed: set[str], kind: str) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if key in allowed:
                continue
            if key in UNSUPPORTED.get(kind, ()):
                raise self.fail(path + (key,), "supported by agentgateway but not by agw yet")
            raise self.fail(path + (key,), "unknown field")
        return value

    def items(self, value: Any, path: Path, each: Callable[[Any, Path, int], T], required: bool = False) -> tuple[T, ...]:
        if value is None and not required:
            return ()
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_kind(value)}")
        return tuple(each(item, path + (i,), i) for i, item in enumerate(value))

    def string(self, value: Any, path: Path, optional: bool = False) -> str:
        if value is None and optional:
            return None  # type: ignore[return-value]
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_kind(value)}")
        return value

    def gateway(self, data: Any) -> GatewayConfig:
        top = self.mapping(data, (), {"binds", "config"}, "top")
        binds = self.items(top.get("binds"), ("binds",), self.bind, required=True)
        if not binds:
            raise self.fail(("binds",), "at least one bind is required")
        ports = [b.port for b in binds]
        for i, port in enumerate(ports):
            if port != 0 and port in ports[:i]:
                raise self.fail(("binds", i, "port"), f"port {port} is bound twice")
        settings = self.mapping(top.get("config"), ("config",), {"statsAddr", "readinessAddr", "adminAddr", "workers"}, "config")
        workers = settings.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise self.fail(("config", "workers"), f"expected a number of processes (0: one per CPU), got {workers!r}")
        defaults = GatewayConfig(binds=binds)
        return GatewayConfig(
            binds=binds,
            stats_addr=self.address(settings.get("statsAddr"), ("config", "statsAddr"), defaults.stats_addr),
            readiness_addr=self.address(
                settings.get("readinessAddr"), ("config", "readinessAddr"), defaults.readiness_addr
            ),
            admin_addr=self.address(settings.get("adminAddr"), ("config", "adminAddr"), defaults.admin_addr),
            workers=workers,
        )

    def address(self, value: Any, path: Path, default: Address) -> Address:
        if value is None:
            return default
        match = _ADDRESS.match(self.string(value, path))
        if not match or int(match.group("port")) > 65535:
            raise self.fail(path, f"expected host:port (e.g. [::]:15020), got {value!r}")
        host = match.group("v6") or match.group("host") or "::"
        return Address(host, int(match.group("port")))

    def bind(self, value: Any, path: Path, index: int) -> Bind:
        bind = self.mapping(value, path, {"port", "listeners"}, "bind")
        port = bind.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # e.g. port: $PORT
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise self.fail(path + ("port",), f"expected a port number 0-65535, got {port!r}")
        return Bind(port=port, listeners=self.items(bind.get("listeners"), path + ("listeners",), self.listener))

    def listener(self, value: Any, path: Path, index: int) -> Listener:
        listener = self.mapping(value, path, {"name", "hostname", "protocol", "routes"}, "listener")
        protocol = self.string(listener.get("protocol", "HTTP"), path + ("protocol",))
        if protocol != "HTTP":
            raise self.fail(path + ("protocol",), f"protocol {protocol} is not supported by agw yet (only HTTP)")
        return Listener(
            name=self.string(listener.get("name", f"listener{index}"), path + ("name",)),
            hostname=self.string(listener.get("hostname"), path + ("hostname",), optional=True),
            protocol=protocol,
            routes=self.items(listener.get("routes"), path + ("routes",), self.route),
        )

    def route(self, value: Any, path: Path, index: int) -> Route:
        route = self.mapping(value, path, {"name", "matches", "backends", "policies"}, "route")
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
        match = self.mapping(value, path, {"path"}, "match")
        if match.get("path") is None:
            return RouteMatch()
        path = path + ("path",)
        spec = self.mapping(match["path"], path, {"exact", "pathPrefix", "regex"}, "path")
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
        backend = self.mapping(value, path, {"ai"}, "backend")
        if "ai" not in backend:
            raise self.fail(path, "expected an ai: backend (other backend kinds are not supported by agw yet)")
        path = path + ("ai",)
        ai = self.mapping(backend["ai"], path, {"name", "provider", "hostOverride", "pathOverride", "pathPrefix"}, "ai")
        provider = self.mapping(ai.get("provider"), path + ("provider",), {"openAI"}, "provider")
        if "openAI" not in provider:
            raise self.fail(path + ("provider",), "expected a provider (openAI)")
        openai = self.mapping(provider["openAI"], path + ("provider", "openAI"), {"model"}, "openAI")
        host_override = self.string(ai.get("hostOverride"), path + ("hostOverride",), optional=True)
        if host_override is not None and not _ADDRESS.match(host_override):
            raise self.fail(path + ("hostOverride",), f"expected host:port, got {host_override!r}")
        return AIBackend(
            name=self.string(ai.get("name"), path + ("name",)),
            provider="openAI",
            model=self.string(openai.get("model"), path + ("provider", "openAI", "model"), optional=True),
            host_override=host_override,
            path_override=self.string(ai.get("pathOverride"), path + ("pathOverride",), optional=True),
            path_prefix=self.string(ai.get("pathPrefix"), path + ("pathPrefix",), optional=True),
        )

    def policies(self, value: Any, path: Path) -> Policies:
        policies = self.mapping(value, path, {"ai", "backendAuth", "transformations", "backendTLS"}, "policies")
        ai = self.mapping(policies.get("ai"), path + ("ai",), {"routes"}, "aiPolicy")
        routes = ai.get("routes") or {}
        if not isinstance(routes, dict):
            raise self.fail(path + ("ai", "routes"), f"expected a mapping of path suffix to route type, got {_kind(routes)}")
        ai_routes = []
        for suffix, kind in routes.items():
            try:
                route_type = RouteType(kind)
            except ValueError:
                choices = ", ".join(t.value for t in RouteType)
                raise self.fail(path + ("ai", "routes", suffix), f"unknown route type {kind!r} (one of {choices})") from None
            if route_type in _UNSERVED_ROUTE_TYPES:
                raise self.fail(path + ("ai", "routes", suffix), f"route type {kind} is supported by agentgateway but not by agw yet")
            ai_routes.append((suffix, route_type))
        key = None
        if policies.get("backendAuth") is not None:
            auth = self.mapping(policies["backendAuth"], path + ("backendAuth",), {"key"}, "backendAuth")
            key = Secret(self.string(auth.get("key"), path + ("backendAuth", "key")))
        transformations = self.mapping(policies.get("transformations"), path + ("transformations",), {"request"}, "transformations")
        backend_tls = None
        if "backendTLS" in policies:
            tls_path = path + ("backendTLS",)
            tls = self.mapping(policies["backendTLS"], tls_path, {"root", "hostname"}, "backendTLS")
            backend_tls = BackendTLS(
                root=self.string(tls.get("root"), tls_path + ("root",), optional=True),
                hostname=self.string(tls.get("hostname"), tls_path + ("hostname",), optional=True),
            )
        return Policies(
            ai_routes=tuple(ai_routes),
            backend_key=key,
            backend_tls=backend_tls,
            request_headers=self.header_transform(transformations.get("request"), path + ("transformations", "request")),
        )

    def header_transform(self, value: Any, path: Path) -> HeaderTransform:
        request = self.mapping(value, path, {"remove", "add", "set"}, "requestTransform")
        remove = self.items(request.get("remove"), path + ("remove",), lambda v, p, i: self.string(v, p).lower())
        return HeaderTransform(
            remove=remove,
            add=self.header_values(request.get("add"), path + ("add",)),
            set=self.header_values(request.get("set"), path + ("set",)),
        )

    def header_values(self, value: Any, path: Path) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of header name to value, got {_kind(value)}")
        result = []
        for name, text in value.items():
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                raise self.fail(path + (name,), f"expected a literal string value, got {_kind(text)}")
            result.append((name.lower(), str(text)))
        return tuple(result)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
