"""
Helpers for end-to-end tests: the repo's seed config pointed at a
L{FakeOpenAI} on loopback, a running gateway, and metric readers.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from decimal import Decimal
from typing import Any

import attrs
import treq
import yaml
from openai import OpenAI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from agw import Gateway, parse_config
from agw.http import HTTPOptions
from agw.metering import AccessLog
from agw.realtime import RelayOptions
from agw.testing import FakeOpenAI, PostgresUnavailable
from agw.testing import PostgresServer as _PostgresServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CONFIG = os.path.join(REPO, "config.yaml")
BACKEND_KEY = "sk-backend-SECRET-0123456789"
CLIENT_KEY = "sk-client-DIFFERENT-9876543210"
TOKEN_METRIC = "agentgateway_gen_ai_client_token_usage"


def seed_config_text(upstream_port: int, extra_routes: dict[str, str] | None = None, azure: dict | None = None) -> str:
    """
    The repo's config.yaml unchanged except: every AI backend gets
    C{hostOverride} to the fake, binds use ephemeral ports and the stats,
    readiness and admin listeners are on loopback. With C{azure}, every backend's
    provider is C{azure: {**azure, model: <the openAI model, if any>}}.
    """
    with open(SEED_CONFIG) as f:
        data = yaml.safe_load(f)
    for bind in data["binds"]:
        bind["port"] = 0
        for listener in bind["listeners"]:
            for route in listener["routes"]:
                for backend in route.get("backends", []):
                    backend["ai"]["hostOverride"] = f"127.0.0.1:{upstream_port}"
                    if azure is not None:
                        model = (backend["ai"]["provider"]["openAI"] or {}).get("model")
                        backend["ai"]["provider"] = {"azure": {**azure, **({"model": model} if model else {})}}
                if extra_routes and "*" in route["policies"]["ai"]["routes"]:
                    route["policies"]["ai"]["routes"].update(extra_routes)
    # adminAddr too: agentgateway's default (localhost:15000) may be taken on this machine.
    data["config"] = {"statsAddr": "127.0.0.1:0", "readinessAddr": "127.0.0.1:0", "adminAddr": "127.0.0.1:0"}
    return yaml.safe_dump(data)


class GatewayTestCase(TestCase):
    """A trial test case with a fake upstream and agw (seed config) running."""

    relay_options = RelayOptions()
    http_options = HTTPOptions()
    # Extra path suffix -> route type entries for the seed's catch-all route.
    relay_types: dict[str, str] = {}
    # The seed's providers replaced by this azure provider (see seed_config_text).
    azure: dict | None = None
    # twisted.web's server and Agent (--legacy-http) instead of agw's own front door and client.
    legacy_http = False
    # The backend key as the environment holds it (a Kubernetes secret may end in a newline).
    backend_key_env = BACKEND_KEY

    @inlineCallbacks
    def setUp(self) -> Any:
        # Blocking clients (the SDK, websockets) run in reactor threads.
        reactor.suggestThreadPoolSize(32)
        self.fake = FakeOpenAI()
        upstream = self.fake_port = yield self.fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        self.upstream_port = upstream.getHost().port
        config = parse_config(
            seed_config_text(self.upstream_port, self.relay_types, self.azure), {"OPENAI_API_KEY": self.backend_key_env},
        )
        self.access_log = io.StringIO()
        http_options = attrs.evolve(self.http_options, legacy_http=True) if self.legacy_http else self.http_options
        self.gateway = Gateway(
            config, relay_options=self.relay_options, http_options=http_options,
            access_log=AccessLog(self.access_log),
        )
        self.service = self.gateway.service(interface="127.0.0.1", drain_period=0)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield wait_until(self.service.is_ready)
        self.port = self.service.port_of(0)
        self.stats_port = self.service.stats.port.getHost().port
        self.readiness_port = self.service.readiness.port.getHost().port

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @inlineCallbacks
    def metrics_text(self) -> Any:
        """The live /metrics page."""
        response = yield treq.get(f"http://127.0.0.1:{self.stats_port}/metrics", persistent=False)
        self.assertEqual(response.code, 200)
        return (yield response.text())

    @inlineCallbacks
    def scrape(self) -> Any:
        """L{samples} of the live /metrics page."""
        text = yield self.metrics_text()
        return samples(text)


def samples(metrics_text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """C{{(name, frozenset(labels.items())): value}} from a /metrics page."""
    found = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def registry_samples(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """L{samples} of a registry, read in-process."""
    return samples(generate_latest(registry).decode())


def token_sums(samples: dict, metric: str = TOKEN_METRIC) -> dict[tuple[str, str, str], float]:
    """Histogram C{_sum}s by C{(operation, response model, token type)}."""
    sums: dict[tuple[str, str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == metric + "_sum":
            label = dict(labels)
            key = (label["gen_ai_operation_name"], label["gen_ai_response_model"], label["gen_ai_token_type"])
            sums[key] = sums.get(key, 0) + value
    return sums


def open_client(url: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("additional_headers", {"Authorization": f"Bearer {CLIENT_KEY}"})
    return connect(url, max_size=None, open_timeout=10, compression=None, **kwargs)


def recv_event(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=10))


def handshake_status(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Status and body of a refused handshake."""
    try:
        open_client(url, **kwargs).close()
    except InvalidStatus as e:
        return e.response.status_code, e.response.body or b""
    raise AssertionError("handshake was accepted")


def wait_closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the connection closes; the close code and reason received."""
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as e:
        return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, None)


def run_session(ws_base: str, responses: int) -> list[dict[str, Any]]:
    """A blocking SDK session (run in a thread): N text responses; returns the response.done events."""
    client = OpenAI(api_key=CLIENT_KEY, websocket_base_url=ws_base)
    done = []
    with client.realtime.connect(model="gpt-realtime") as connection:
        for i in range(responses):
            connection.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Say hello {i}"}]}
            )
            connection.response.create(response={"output_modalities": ["text"]})
            for event in connection:
                if event.type == "response.done":
                    done.append(event.model_dump())
                    break
    return done


def modality_sums(samples: dict) -> dict[tuple[str, str, str], float]:
    """agw_gen_ai_tokens_total by (operation, token type, modality)."""
    sums: dict[tuple[str, str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == "agw_gen_ai_tokens_total":
            label = dict(labels)
            key = (label["gen_ai_operation_name"], label["gen_ai_token_type"], label["gen_ai_token_modality"])
            sums[key] = sums.get(key, 0) + value
    return sums


def ledger_modalities(ledger: list) -> dict[tuple[str, str, str], float]:
    """The fake's ledger by (operation, token type, modality), unreported remainders as 'unknown'."""
    sums: dict[tuple[str, str, str], float] = {}

    def add(operation: str, token_type: str, total: int, details: dict) -> None:
        attributed = 0
        for modality in ("text", "audio", "image"):
            tokens = details.get(f"{modality}_tokens", 0)
            if tokens:
                sums[(operation, token_type, modality)] = sums.get((operation, token_type, modality), 0) + tokens
                attributed += tokens
        if total > attributed:
            sums[(operation, token_type, "unknown")] = sums.get((operation, token_type, "unknown"), 0) + total - attributed

    for entry in ledger:
        usage = entry.usage
        input_details = usage.get("input_token_details") or {}
        add(entry.operation, "input", usage.get("input_tokens", 0), input_details)
        output_details = usage.get("output_token_details") or ({"text_tokens": usage.get("output_tokens", 0)} if entry.operation == "transcription" else {})
        add(entry.operation, "output", usage.get("output_tokens", 0), output_details)
        if "cached_tokens" in input_details:
            add(entry.operation, "input_cache_read", input_details["cached_tokens"], input_details.get("cached_tokens_details") or {})
    return sums


def catalog_price(usage: dict[str, Any]) -> Decimal:
    """What agw's default catalog says a gpt-realtime response costs, from the provider's own usage object."""
    details, cached = usage["input_token_details"], usage["input_token_details"]["cached_tokens_details"]
    text_in, audio_in = details["text_tokens"], details["audio_tokens"]
    out = usage["output_token_details"]
    per_million = (
        (text_in - cached["text_tokens"]) * Decimal(4) + cached["text_tokens"] * Decimal("0.4")
        + (audio_in - cached["audio_tokens"]) * Decimal(32) + cached["audio_tokens"] * Decimal("0.4")
        + out["text_tokens"] * Decimal(16) + out["audio_tokens"] * Decimal(64)
    )
    return per_million / 1_000_000


def accepts_connections(port: int) -> bool:
    """Whether something on 127.0.0.1 accepts a TCP connection on C{port}."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:C{port}; return whatever comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_and_json(response: bytes) -> tuple[int, Any]:
    """The status code and JSON body (C{None} if empty) of a raw HTTP/1.1 response with a Content-Length."""
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else None


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> Deferred[None]:
    """Poll C{predicate} on the reactor until true; fail after C{timeout}."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout

    @inlineCallbacks
    def poll() -> Any:
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {predicate!r}")
            yield deferLater(reactor, interval, lambda: None)

    return poll()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwistdAgw:
    """
    C{twistd -n agw} in a subprocess: the seed config with hostOverride to
    C{upstream_port}, free ports, its log and standard output in files.
    """

    def __init__(
        self, process: subprocess.Popen, port: int, stats: int, ready: int, log: str, stdout: str, config_path: str,
    ) -> None:
        self.process, self.port, self.stats, self.ready, self.log, self.stdout = process, port, stats, ready, log, stdout
        self.config_path = config_path
        self.admin = 0

    def edit_config(self, edit: Any) -> None:
        """Change its config file as an editor would (a new file renamed over it); C{edit} changes the parsed YAML."""
        with open(self.config_path) as f:
            config = yaml.safe_load(f)
        edit(config)
        with open(self.config_path + ".new", "w") as f:
            yaml.safe_dump(config, f)
        os.replace(self.config_path + ".new", self.config_path)

    @classmethod
    @inlineCallbacks
    def start(
        cls, case: TestCase, upstream_port: int | None, *args: str, access_log: str = "off", edit: Any = None,
        key: str | None = BACKEND_KEY, environ: dict[str, str] | None = None,
    ) -> Any:
        """
        Start it; C{upstream_port} C{None}: the seed config's backends as they are; C{key} C{None}: no
        C{OPENAI_API_KEY}; C{environ}: more environment variables (for the config's C{$VAR}s).
        """
        with open(SEED_CONFIG) as f:
            config = yaml.safe_load(f)
        port, stats, ready, admin = free_port(), free_port(), free_port(), free_port()
        config["binds"][0]["port"] = port
        for route in config["binds"][0]["listeners"][0]["routes"]:
            if upstream_port is not None:
                route["backends"][0]["ai"]["hostOverride"] = f"127.0.0.1:{upstream_port}"
        # Every listener on a port of its own: agentgateway's default adminAddr (15000) may be taken on this machine.
        config["config"] = {"statsAddr": f"127.0.0.1:{stats}", "readinessAddr": f"127.0.0.1:{ready}", "adminAddr": f"127.0.0.1:{admin}"}
        if edit is not None:
            edit(config)  # the test's own changes to the seed config
        path = case.mktemp() + ".yaml"
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        log, stdout = case.mktemp() + ".log", case.mktemp() + ".out"
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {name: value for name, value in os.environ.items() if name != "OPENAI_API_KEY"}
        env.update({"PYTHONPATH": REPO}, **({"OPENAI_API_KEY": key} if key is not None else {}), **(environ or {}))
        with open(stdout, "wb") as out:
            process = subprocess.Popen(
                [twistd, "-n", "--pidfile=", f"--logfile={log}", "agw", "-f", path, "-i", "127.0.0.1", "--access-log", access_log, *args],
                env=env, stdout=out,
            )
        case.addCleanup(lambda: process.poll() is None and process.kill())
        agw = cls(process, port, stats, ready, log, stdout, path)
        agw.admin = int(config["config"]["adminAddr"].rsplit(":", 1)[1])  # the page's port (an edit may have moved it)
        yield wait_until(agw.is_ready, timeout=30)
        return agw

    def is_ready(self) -> bool:
        """The readiness probe answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ready}/healthz/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> Any:
        """SIGTERM; fires with the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return deferToThread(self.process.wait, 30)

    @inlineCallbacks
    def metrics_text(self) -> Any:
        """The parent's /metrics page."""
        response = yield treq.get(f"http://127.0.0.1:{self.stats}/metrics", persistent=False)
        return (yield response.text())

    def log_text(self) -> str:
        with open(self.log) as f:
            return f.read()


def rss(pid: int) -> int:
    """The resident set size of process C{pid}, in bytes (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def PostgresServer(case: TestCase) -> _PostgresServer:
    """A real PostgreSQL server (L{agw.testing.PostgresServer}) for C{case}, removed at cleanup; skips without one."""
    try:
        server = _PostgresServer()
    except PostgresUnavailable as e:
        from twisted.trial.unittest import SkipTest

        raise SkipTest(str(e)) from None
    case.addCleanup(server.remove)
    return server


@inlineCallbacks
def listening_fake(case: TestCase, **listen: Any) -> Any:
    """A L{FakeOpenAI} listening on loopback for C{case} (stopped at cleanup); fires with (fake, port)."""
    reactor.suggestThreadPoolSize(32)  # blocking clients (the SDK, websockets) run in reactor threads
    fake = FakeOpenAI()
    listening = yield fake.listen(reactor, **listen)
    case.addCleanup(listening.stopListening)
    return fake, listening.getHost().port


@inlineCallbacks
def running_gateway(case: TestCase, config_text: str, environ: dict[str, str] | None = None, **gateway: Any) -> Any:
    """agw from C{config_text}, serving on loopback for C{case}; fires with (gateway, service, port of the first bind)."""
    config = parse_config(config_text, {"OPENAI_API_KEY": BACKEND_KEY} if environ is None else environ)
    if getattr(case, "legacy_http", False):
        gateway["http_options"] = attrs.evolve(gateway.get("http_options", HTTPOptions()), legacy_http=True)
    built = Gateway(config, **gateway)
    service = built.service(interface="127.0.0.1", drain_period=0)
    service.startService()
    case.addCleanup(service.stopService)
    yield wait_until(service.is_ready)
    return built, service, service.port_of(config.binds[0].port)


class LoopbackClient:
    """
    Mixin for test cases with agw on C{self.port}: the openai SDK (in a
    thread) and JSON posts through treq, against its HTTP routes.
    """

    port: int

    def sdk(self, call: Any) -> Deferred[Any]:
        """C{call(client)} with an C{openai.OpenAI} client for agw, run in a thread."""
        def run() -> Any:
            with OpenAI(api_key="sk-client", base_url=f"http://127.0.0.1:{self.port}/v1", max_retries=0) as client:
                return call(client)

        return deferToThread(run)

    @inlineCallbacks
    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST C{body} as JSON; fires with (response, its body)."""
        response = yield treq.post(f"http://127.0.0.1:{self.port}{path}", json=body, persistent=False)
        content = yield response.content()
        return response, content


def guard_check_counts(gateway: Any, *labels: str) -> dict[tuple[str, ...], float]:
    """agentgateway_guardrail_checks_total of C{gateway} by the values of C{labels}."""
    return {
        tuple(dict(found)[name] for name in labels): value
        for (metric, found), value in registry_samples(gateway.metrics.registry).items()
        if metric == "agentgateway_guardrail_checks_total"
    }


def on_twisted_web(case: type[TestCase]) -> type[TestCase]:
    """
    C{case} again, on twisted.web's server and Agent (C{--legacy-http})
    instead of agw's own front door and client: for the tests that hold
    for both. Its setUp must start agw through L{GatewayTestCase} or
    L{running_gateway}, which read C{legacy_http}.
    """
    return type("TwistedWeb" + case.__name__, (case,), {
        "legacy_http": True, "__module__": case.__module__, "__doc__": f"{case.__name__}, on --legacy-http.",
    })
