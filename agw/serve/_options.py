"""
C{twistd agw}'s command-line options, and the L{Gateway} they describe.

The config is loaded and checked while options are parsed, so a bad config
stops twistd with one line naming the problem before anything listens.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from agw.config import ConfigError, GatewayConfig, MiB, load_config

if TYPE_CHECKING:
    from agw.metering import AccessLog
    from agw.serve._gateway import Gateway


class Options(usage.Options):
    """Command-line options of C{twistd agw}."""

    # Defaults are given as numbers: twistd coerces only what is typed.
    optParameters = [
        ["config", "f", "config.yaml", "agentgateway-format config file (YAML)."],
        ["interface", "i", "::", "Address the binds listen on."],
        ["upstream-timeout", None, 300.0, "Seconds an upstream gets to answer (headers) once the request body is sent, or to take more of it while it is sent (then 504).", float],
        ["access-log", None, "json", "Access log format: json (agentgateway's field names), combined (NCSA), or off."],
        ["access-log-file", None, "-", "Where access log lines go: '-' for standard output, or a file to append to."],
        ["log-format", None, "text", "The process's own log: text (twistd's), or json (one object per line on standard output, as the access log)."],
        ["drain-period", None, 5.0, "On stop, seconds sessions and HTTP requests get to finish before sessions are closed with 1001.", float],
        ["max-message-size", None, 16 * MiB, "Largest Realtime message in bytes (bigger: close 1009).", int],
        ["handshake-timeout", None, 10.0, "Seconds the upstream gets to answer a Realtime handshake (then 504).", float],
        ["cancel-grace", None, 5.0, "Seconds an abandoned Realtime response, or an HTTP answer whose client left, gets to report its usage.", float],
        ["max-request-body", None, 512 * MiB, "Largest HTTP request body in bytes (bigger: 413 before it is read).", int],
        ["max-buffered-bodies", None, 2048 * MiB, "Bytes of request bodies one bind holds at once, memory and temporary files (more: 503).", int],
        ["upload-min-rate", None, 1024, "Bytes a second an HTTP request body must keep arriving at after --upload-grace (slower: 408); 0: any.", int],
        ["upload-grace", None, 20.0, "Seconds an HTTP request body may take before --upload-min-rate applies.", float],
        ["max-json-body", None, 32 * MiB, "Largest body of a completions, responses or embeddings request (bigger: 413).", int],
        ["json-thread-threshold", None, 1 * MiB, "Request bodies agw reads larger than this many bytes are decoded in a thread, off the reactor.", int],
        ["body-idle-timeout", None, 300.0, "Seconds an upstream HTTP response body may stay silent before it is cut off.", float],
        ["max-sessions", None, 10_000, "Realtime sessions one bind serves at once (more: 503).", int],
        ["max-fragments", None, 1024, "Fragments one Realtime message may have (more: close 1009).", int],
        ["client-deflate", None, "off",
         "A Realtime client's permessage-deflate offer: off (declined), small (accepted with small windows, no zlib "
         "state kept between messages), or accept (as offered: about 100 KiB more per session)."],
        ["max-model-labels", None, 200, "Distinct model names per metric label before new ones count as 'other'.", int],
        ["reserve-tokens", None, 4096, "Tokens a response is held for against a Tokens budget until it reports usage (more, once a larger one was seen).", int],
        ["reserve-usd", None, "0.10", "USD a response is held for against a USD budget until it reports usage (more, once a larger one was seen)."],
        ["charge-spool", None, os.path.join(tempfile.gettempdir(), "agw-charges"),
         "Directory for budget charges the ledger cannot take when agw stops (written at the next start); '' for none."],
        ["workers", None, None, "Gateway processes sharing the binds (0: one per CPU; default: config.workers, or 1).", int],
    ]

    optFlags = [
        ["validate-only", None, "Load and check the config, print what agw would serve, and exit: 0 valid, 1 with the error."],
        ["demo", None, "Send every backend to agw.testing's fake OpenAI on loopback (no key, no network); one process."],
        ["no-watch", None, "Do not reload when the config file changes (SIGHUP still reloads)."],
        ["message-relay", None, "Relay Realtime messages whole (unmask, validate UTF-8, re-frame) instead of passing frames through."],
        ["legacy-http", None, "Serve and forward HTTP with twisted.web's server and Agent, as agw did before its own front door and client."],
    ]

    config_object: GatewayConfig

    def postOptions(self) -> None:
        from agw.metering import ACCESS_LOG_FORMATS
        from agw.realtime import CLIENT_DEFLATE

        if self["access-log"] not in (*ACCESS_LOG_FORMATS, "off"):
            raise usage.UsageError(f"--access-log: expected one of json, combined, off; got {self['access-log']!r}")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format: expected text or json; got {self['log-format']!r}")
        if self["client-deflate"] not in CLIENT_DEFLATE:
            raise usage.UsageError(f"--client-deflate: expected one of {', '.join(CLIENT_DEFLATE)}; got {self['client-deflate']!r}")
        self._environ: Mapping[str, str] = os.environ
        if self["demo"]:
            from agw.serve._demo import DemoEnvironment

            self._environ = DemoEnvironment(os.environ)
        try:
            self.config_object = self.load()
        except ConfigError as e:
            # The one line (where in the config, the file and line, why), on stderr; exit 1. Not twistd's
            # usage text as well: forty lines of flags hide it, and the flags were not the problem.
            raise SystemExit(str(e)) from None
        if self["reserve-tokens"] < 1:
            raise usage.UsageError("--reserve-tokens: expected 1 or more")
        try:
            if not Decimal(self["reserve-usd"]) > 0:
                raise InvalidOperation
        except InvalidOperation:
            raise usage.UsageError(f"--reserve-usd: expected an amount above 0, e.g. 0.10; got {self['reserve-usd']!r}") from None
        if self["workers"] is not None and self["workers"] < 0:
            raise usage.UsageError("--workers: expected 0 (one per CPU) or more")
        if self["demo"] and self["workers"] not in (None, 1):
            raise usage.UsageError("--demo runs one process: its fake provider lives in it")
        if self["validate-only"]:
            from agw.serve._validate import describe

            sys.stdout.write(describe(self.config_object, self["config"], self["interface"]))
            raise SystemExit(0)

    def load(self) -> GatewayConfig:
        """Read and check the config file as these options say (again, for a reload); raises L{ConfigError}."""
        config = load_config(self["config"], self._environ)
        check_files(config)
        return config

    @property
    def worker_count(self) -> int:
        """How many gateway processes to run: the option, else the config."""
        if self["demo"]:
            return 1
        count = self["workers"] if self["workers"] is not None else self.config_object.workers
        return count or os.cpu_count() or 1

    def gateway_arguments(self) -> list[str]:
        """These options (but C{--workers}) as command-line arguments, for worker processes."""
        values = {name: self[name] for name, *_ in Options.optParameters if name != "workers"}
        values["config"] = os.path.abspath(values["config"])
        flags = [f"--{flag}" for flag in ("message-relay", "legacy-http") if self[flag]]
        # Workers reload when the pool signals them; only the pool watches the file.
        return [f"--{name}={value}" for name, value in values.items()] + flags + ["--no-watch"]


def check_files(config: GatewayConfig) -> None:
    """
    Files the config names (listeners' C{tls} certificates and keys, C{backendTLS.root}, a
    moderation guard's, C{modelCatalog}) can be read and used, and what C{config.database.url}
    needs is installed; raises L{ConfigError}.
    """
    from agw.metering import CatalogError, catalog_for
    from agw.routing import TrustRootError, read_trust_root

    from agw.serve._tls import ListenerTLSError, tls_by_port

    try:
        tls_by_port(config)  # each HTTPS listener's certificate and key: readable, PEM, matching
    except ListenerTLSError as e:
        raise ConfigError(e.path, e.message) from None
    for b, bind in enumerate(config.binds):
        for l, listener in enumerate(bind.listeners):
            for r, route in enumerate(listener.routes):
                tls = route.policies.backend_tls
                if tls is not None and tls.root is not None:
                    try:
                        read_trust_root(tls.root)
                    except TrustRootError as e:
                        raise ConfigError(f"binds[{b}].listeners[{l}].routes[{r}].policies.backendTLS.root", str(e)) from None
                for g, guard in enumerate(route.policies.prompt_guard.request):
                    if guard.moderation is not None and guard.moderation.tls_root is not None:
                        try:
                            read_trust_root(guard.moderation.tls_root)
                        except TrustRootError as e:
                            where = f"binds[{b}].listeners[{l}].routes[{r}].policies.ai.promptGuard.request[{g}]"
                            raise ConfigError(f"{where}.openAIModeration.policies.backendTLS.root", str(e)) from None
    try:
        catalog_for(config.model_catalog)
    except CatalogError as e:
        raise ConfigError("config.modelCatalog", str(e)) from None
    if config.database_url is not None:
        from agw.metering import LedgerURLError, check_ledger_url

        try:
            check_ledger_url(config.database_url.value)
        except LedgerURLError as e:
            raise ConfigError("config.database.url", str(e)) from None
    if config.tracing is not None:
        from agw.tracing import tracing_available

        if not tracing_available():
            raise ConfigError("config.tracing", "needs the OpenTelemetry SDK: pip install 'agw[tracing]'")


def gateway_from_options(options: Options, access_log_fields: dict[str, Any] | None = None, token_key: bytes | None = None) -> Gateway:
    """The L{Gateway} these options describe (C{token_key}: a worker pool's, for its client secrets)."""
    from agw.http import HTTPOptions
    from agw.metering import GatewayMetrics, ReserveOptions, catalog_for
    from agw.realtime import RelayOptions
    from agw.serve._gateway import Gateway

    http_options = HTTPOptions(
        response_timeout=options["upstream-timeout"],
        max_request_body=options["max-request-body"],
        max_buffered_bodies=options["max-buffered-bodies"],
        upload_min_rate=options["upload-min-rate"],
        upload_grace=options["upload-grace"],
        max_json_body=options["max-json-body"],
        json_thread_threshold=options["json-thread-threshold"],
        body_idle_timeout=options["body-idle-timeout"],
        usage_grace=options["cancel-grace"],
        legacy_http=bool(options["legacy-http"]),
    )
    relay_options = RelayOptions(
        max_message_size=options["max-message-size"],
        handshake_timeout=options["handshake-timeout"],
        cancel_grace=options["cancel-grace"],
        max_sessions=options["max-sessions"],
        max_fragments=options["max-fragments"],
        pass_through=not options["message-relay"],
        client_deflate=options["client-deflate"],
    )
    return Gateway(
        options.config_object, relay_options=relay_options, http_options=http_options,
        metrics=GatewayMetrics(
            max_model_labels=options["max-model-labels"], catalog=catalog_for(options.config_object.model_catalog),
            extra_labels=tuple(label for label, _ in options.config_object.metric_fields),
        ),
        access_log=open_access_log(options["access-log"], options["access-log-file"], access_log_fields),
        rate_limit_share=1.0 / max(1, options.get("worker-count", 1)),
        reserve=ReserveOptions(tokens=options["reserve-tokens"], usd=Decimal(options["reserve-usd"])),
        charge_spool=options["charge-spool"],
        token_key=token_key,
    )


def open_access_log(log_format: str, where: str, fields: dict[str, Any] | None = None) -> AccessLog:
    """The access log the command line asks for (C{log_format} to C{where}); C{fields} go into every line."""
    from agw.metering import ACCESS_LOG_FORMATS, NO_ACCESS_LOG

    if log_format == "off":
        return NO_ACCESS_LOG
    # twistd replaces sys.stdout with a logging file; the access log
    # wants plain lines on the real standard output.
    stream = sys.__stdout__ if where == "-" else open(where, "a", encoding="utf-8")
    return ACCESS_LOG_FORMATS[log_format](stream, fields=fields)
