"""
A bind's C{listeners}: their C{protocol} (C{HTTP}, or C{HTTPS} with
C{tls}) and how they may share a bind. agentgateway serves a bind with any
HTTPS listener as TLS only (its HTTP listeners are then never reached);
agw refuses such a mix instead, so HTTP and HTTPS go on separate binds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agw.config._model import Listener, Route
from agw.config._policies import PolicyParser
from agw.config._tls import SUITE_ALIASES, TLS12_SUITES, TLS13_SUITES, ServerTLS, TLSVersion
from agw.config._yamlsource import Path

# agentgateway's listener protocols agw does not serve (TCP routes, TLS passthrough, mesh tunnels).
_UNSERVED_PROTOCOLS = frozenset({"TLS", "TCP", "HBONE"})


class ListenerParser(PolicyParser):
    """Parses C{listeners[]} and their C{tls} (mixed into the config parser, which parses routes)."""

    route: Callable[[Any, Path, int], Route]

    def listener(self, value: Any, path: Path, index: int) -> Listener:
        listener = self.mapping(value, path, "listener")
        protocol = self.string(listener.get("protocol", "HTTP"), path + ("protocol",))
        if protocol in _UNSERVED_PROTOCOLS:
            raise self.fail(path + ("protocol",), f"protocol {protocol} is supported by agentgateway but not by agw yet (HTTP or HTTPS)")
        if protocol not in ("HTTP", "HTTPS"):
            raise self.fail(path + ("protocol",), f"expected HTTP or HTTPS, got {protocol!r}")
        tls = None
        if protocol == "HTTPS":
            if listener.get("tls") is None:
                raise self.fail(path + ("tls",), "an HTTPS listener requires tls (cert and key)")
            tls = self.server_tls(listener["tls"], path + ("tls",))
        elif listener.get("tls") is not None:
            # agentgateway would serve this listener as plain HTTP, ignoring its certificate.
            raise self.fail(path + ("tls",), "tls is used only with protocol: HTTPS (this listener is HTTP)")
        return Listener(
            name=self.string(listener.get("name", f"listener{index}"), path + ("name",)),
            hostname=self.string(listener.get("hostname"), path + ("hostname",), optional=True),
            protocol=protocol,
            routes=self.items(listener.get("routes"), path + ("routes",), self.route),
            tls=tls,
        )

    def bind_listeners(self, listeners: tuple[Listener, ...], path: Path) -> None:
        """Listeners of one bind are all HTTP or all HTTPS, and HTTPS ones agree on what precedes the server name."""
        for index, listener in enumerate(listeners):
            if listener.protocol != listeners[0].protocol:
                raise self.fail(path + (index, "protocol"), (
                    f"{listener.protocol} beside {listeners[0].protocol} on one bind: agentgateway serves such a bind "
                    "as TLS only, where HTTP listeners are never reached; give HTTP and HTTPS listeners separate binds"
                ))
            if listener.tls is not None and listener.tls.handshake_settings != listeners[0].tls.handshake_settings:  # type: ignore[union-attr]
                raise self.fail(path + (index, "tls"), (
                    "HTTPS listeners of one bind must agree on minTLSVersion, maxTLSVersion and cipherSuites "
                    "(they are settled before the server name picks a certificate)"
                ))

    def server_tls(self, value: Any, path: Path) -> ServerTLS:
        """A listener's C{tls}: C{cert}, C{key}, the versions and cipher suites (the files are checked by agw.serve)."""
        spec = self.mapping(value, path, "serverTLS")
        mode = self.string(spec.get("mode", "static"), path + ("mode",))
        if mode == "dynamicCa":
            raise self.fail(path + ("mode",), "mode dynamicCa is supported by agentgateway but not by agw yet (static)")
        if mode != "static":
            raise self.fail(path + ("mode",), f"expected static, got {mode!r}")
        files = {}
        for name in ("cert", "key"):
            text = spec.get(name)
            if not isinstance(text, str) or not text:
                raise self.fail(path + (name,), "expected the path of a PEM file")
            files[name] = text
        low = self.tls_version(spec, ("minTLSVersion", "minTlsVersion"), path, TLSVersion.TLS_V1_2)
        high = self.tls_version(spec, ("maxTLSVersion", "maxTlsVersion"), path, TLSVersion.TLS_V1_3)
        if low > high:
            raise self.fail(path, f"invalid TLS version range: {low.value} above {high.value}")
        suites = self.items(spec.get("cipherSuites"), path + ("cipherSuites",), self.cipher_suite)
        if spec.get("cipherSuites") is not None and not suites:
            raise self.fail(path + ("cipherSuites",), "expected at least one cipher suite (leave it out for agw's default set)")
        tls = ServerTLS(files["cert"], files["key"], low, high, suites)
        if not any(
            (version is TLSVersion.TLS_V1_3 and tls.tls13_suites) or (version is TLSVersion.TLS_V1_2 and tls.tls12_suites)
            for version in tls.versions
        ):
            raise self.fail(path + ("cipherSuites",), "no cipher suite of the TLS versions allowed")
        return tls

    def tls_version(self, spec: dict[str, Any], names: tuple[str, str], path: Path, default: TLSVersion) -> TLSVersion:
        """C{minTLSVersion} or its alias C{minTlsVersion} (one of them), and the same for the maximum."""
        given = [name for name in names if spec.get(name) is not None]
        if len(given) > 1:
            raise self.fail(path + (given[1],), f"set {names[0]} or {names[1]}, not both")
        if not given:
            return default
        text = self.string(spec[given[0]], path + (given[0],))
        if text in ("TLS_V1_0", "TLS_V1_1"):
            raise self.fail(path + (given[0],), f"unsupported TLS version: {text} (TLS_V1_2 and TLS_V1_3 only, as agentgateway)")
        try:
            return TLSVersion(text)
        except ValueError:
            raise self.fail(path + (given[0],), f"expected TLS_V1_2 or TLS_V1_3, got {text!r}") from None

    def cipher_suite(self, value: Any, path: Path, index: int) -> str:
        name = self.string(value, path)
        name = SUITE_ALIASES.get(name, name)
        if name not in TLS13_SUITES and name not in TLS12_SUITES:
            choices = ", ".join([*TLS13_SUITES, *TLS12_SUITES])
            raise self.fail(path, f"unknown cipher suite {value!r} (one of {choices})")
        return name
