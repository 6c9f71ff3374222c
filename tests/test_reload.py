"""
Live reload: a config edit changes what new requests and sessions get while
an open Realtime session stays on the config it started with; an invalid
file is refused and the running config stays; binds come and go; SIGHUP and
file watching, one process and workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.config import ConfigError, load_config, parse_config
from agw.serve import ConfigReloader, Gateway, Reloaded
from agw.serve._reload import POLL_SECONDS
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    TwistdAgw,
    accepts_connections,
    free_port,
    handshake_status,
    listening_fake,
    open_client,
    recv_event,
    registry_samples,
    running_gateway,
    samples,
    seed_config_text,
    wait_until,
)

ENV = {"OPENAI_API_KEY": BACKEND_KEY}


def respond(ws: Any) -> dict[str, Any]:
    """One text response on an open session (blocking): its response.done."""
    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while (event := recv_event(ws))["type"] != "response.done":
        pass
    return event


def opened(url: str, **kwargs: Any) -> Any:
    ws = open_client(url, **kwargs)
    assert recv_event(ws)["type"] == "session.created"
    return ws


def strict_keys(config: dict[str, Any]) -> None:
    for route in config["binds"][0]["listeners"][0]["routes"]:
        route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": CLIENT_KEY, "metadata": {"name": "team"}}]}


class InProcessReloadTests(TestCase):
    """A L{Gateway}'s service with a L{ConfigReloader} watching a real file (inotify here)."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.old_fake, self.old_port = yield listening_fake(self)
        self.new_fake, self.new_port = yield listening_fake(self)
        self.path = os.path.abspath(self.mktemp()) + ".yaml"
        self.write(self.config(self.old_port))
        self.gateway = Gateway(load_config(self.path, ENV))
        self.service = self.gateway.service(interface="127.0.0.1", drain_period=0)
        self.reloader = ConfigReloader(
            reactor, self.path, lambda: load_config(self.path, ENV), self.service.reload, self.gateway.metrics.registry,
            sighup=False,
        )
        self.reloader.setServiceParent(self.service)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield wait_until(self.service.is_ready)
        self.port = self.service.port_of(0)
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    def config(self, upstream_port: int, edit: Any = None) -> dict[str, Any]:
        config = yaml.safe_load(seed_config_text(upstream_port))
        if edit is not None:
            edit(config)
        return config

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        # As editors do: a new file renamed over the old one.
        with open(self.path + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.path + ".tmp", self.path)

    def reloads(self) -> dict[str, float]:
        found = registry_samples(self.gateway.metrics.registry)
        return {dict(labels)["result"]: value for (name, labels), value in found.items() if name == "agw_config_reloads_total"}

    @inlineCallbacks
    def test_open_session_keeps_its_config_new_sessions_get_the_new_one(self) -> Any:
        old_session = yield deferToThread(opened, self.url)
        self.addCleanup(deferToThread, old_session.close)

        def moved(config: dict[str, Any]) -> None:
            strict_keys(config)
            config["binds"][0]["listeners"][0]["routes"][0]["policies"]["transformations"]["request"]["set"] = {"x-generation": "2"}

        self.write(self.config(self.new_port, moved))
        yield wait_until(lambda: self.reloads().get("success") == 1, timeout=10)

        # New sessions: the new backend, the new key policy.
        status, _ = yield deferToThread(handshake_status, self.url, additional_headers={})
        self.assertEqual(status, 401)
        new_session = yield deferToThread(opened, self.url)
        self.addCleanup(deferToThread, new_session.close)
        yield deferToThread(respond, new_session)
        self.assertEqual(self.new_fake.handshakes[-1].headers.get("x-generation"), "2")

        # The open session: still the old backend, still no key needed, still metered.
        done = yield deferToThread(respond, old_session)
        self.assertEqual((len(self.old_fake.ledger), len(self.new_fake.ledger)), (1, 1))
        self.assertEqual(done["response"]["usage"], self.old_fake.ledger[0].usage)
        self.assertEqual(len(self.old_fake.handshakes), 1)
        tokens = registry_samples(self.gateway.metrics.registry)
        total = sum(
            v for (name, labels), v in tokens.items()
            if name == "agentgateway_gen_ai_client_token_usage_sum" and dict(labels)["gen_ai_token_type"] in ("input", "output")
        )
        billed = sum(e.usage["input_tokens"] + e.usage["output_tokens"] for e in self.old_fake.ledger + self.new_fake.ledger)
        self.assertEqual(total, billed)

    @inlineCallbacks
    def test_invalid_file_is_refused_and_the_old_config_stays(self) -> Any:
        before = self.reloader.hash
        self.write(self.config(self.new_port, lambda c: c["binds"][0]["listeners"][0]["routes"][0].update(bogus=1)))
        yield wait_until(lambda: self.reloads().get("failure") == 1, timeout=10)
        self.assertEqual(self.reloader.hash, before)
        info = {dict(labels)["hash"] for (name, labels), _ in registry_samples(self.gateway.metrics.registry).items() if name == "agw_config_info"}
        self.assertEqual(info, {before})
        ws = yield deferToThread(opened, self.url)
        yield deferToThread(respond, ws)
        yield deferToThread(ws.close)
        self.assertEqual((len(self.old_fake.ledger), len(self.new_fake.ledger)), (1, 0))
        # Fixed: applied.
        self.write(self.config(self.new_port))
        yield wait_until(lambda: self.reloads().get("success") == 1, timeout=10)
        self.assertNotEqual(self.reloader.hash, before)

    @inlineCallbacks
    def test_binds_are_added_and_removed(self) -> Any:
        extra = free_port()

        def second_bind(config: dict[str, Any]) -> None:
            config["binds"].append({"port": extra, "listeners": config["binds"][0]["listeners"]})

        self.write(self.config(self.old_port, second_bind))
        yield wait_until(lambda: self.reloads().get("success") == 1, timeout=10)
        ws = yield deferToThread(opened, f"ws://127.0.0.1:{extra}/v1/realtime?model=gpt-realtime")
        self.write(self.config(self.old_port))
        yield wait_until(lambda: self.reloads().get("success") == 2, timeout=10)
        yield wait_until(lambda: not accepts_connections(extra), timeout=10)
        # A session on the removed bind finishes what it started.
        done = yield deferToThread(respond, ws)
        self.assertEqual(done["response"]["usage"], self.old_fake.ledger[-1].usage)
        yield deferToThread(ws.close)

    @inlineCallbacks
    def test_a_new_bind_that_cannot_listen_changes_nothing(self) -> Any:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)

        def busy_bind(config: dict[str, Any]) -> None:
            strict_keys(config)
            config["binds"].append({"port": taken.getsockname()[1], "listeners": config["binds"][0]["listeners"]})

        self.write(self.config(self.old_port, busy_bind))
        yield wait_until(lambda: self.reloads().get("failure") == 1, timeout=10)
        ws = yield deferToThread(opened, self.url, additional_headers={})  # the key policy did not apply either
        yield deferToThread(ws.close)


class StoppingTests(TestCase):
    @inlineCallbacks
    def test_no_reload_while_stopping(self) -> Any:
        """A file saved during the drain opens no new port on a gateway that is going away."""
        from agw.serve import ReloadRefused

        _, fake_port = yield listening_fake(self)
        config = yaml.safe_load(seed_config_text(fake_port))
        gateway, service, _ = yield running_gateway(self, yaml.safe_dump(config))
        extra = free_port()
        config["binds"].append({"port": extra, "listeners": config["binds"][0]["listeners"]})
        stopping = service.stopService()
        with self.assertRaises(ReloadRefused):
            service.reload(parse_config(yaml.safe_dump(config), {"OPENAI_API_KEY": BACKEND_KEY}))
        yield stopping
        self.assertFalse(accepts_connections(extra))


class TwistdReloadTests(TestCase):
    """C{twistd agw} as users run it: SIGHUP, and the file watched with --workers."""

    timeout = 90

    @inlineCallbacks
    def test_sighup_reloads_one_process(self) -> Any:
        fake, port = yield listening_fake(self)
        agw = yield TwistdAgw.start(self, port, "--no-watch")
        url = f"ws://127.0.0.1:{agw.port}/v1/realtime?model=gpt-realtime"
        agw.edit_config(strict_keys)
        agw.process.send_signal(signal.SIGHUP)
        yield wait_until(lambda: "config reloaded (SIGHUP)" in agw.log_text(), timeout=15)
        status, _ = yield deferToThread(handshake_status, url, additional_headers={})
        self.assertEqual(status, 401)
        text = yield agw.metrics_text()
        self.assertEqual(samples(text)[("agw_config_reloads_total", frozenset({("result", "success")}))], 1.0)
        # A broken file: one line, and the process keeps serving the last good config.
        with open(agw.config_path, "a") as f:
            f.write("binds: [\n")
        agw.process.send_signal(signal.SIGHUP)
        yield wait_until(lambda: "config reload refused (SIGHUP)" in agw.log_text(), timeout=15)
        (line,) = [line for line in agw.log_text().splitlines() if "config reload refused" in line]
        self.assertIn("invalid YAML", line)
        ws = yield deferToThread(opened, url)
        yield deferToThread(respond, ws)
        yield deferToThread(ws.close)
        self.assertEqual(len(fake.ledger), 1)
        self.assertEqual((yield agw.stop()), 0)

    @inlineCallbacks
    def test_file_edit_reloads_every_worker(self) -> Any:
        _, port = yield listening_fake(self)
        agw = yield TwistdAgw.start(self, port, "--workers", "2")
        url = f"ws://127.0.0.1:{agw.port}/v1/realtime?model=gpt-realtime"
        # Ready is a quorum (one worker): a worker still starting ignores SIGHUP until its reloader runs.
        yield wait_until(lambda: len(re.findall(r"worker \d ready", agw.log_text())) == 2, timeout=30)
        agw.edit_config(strict_keys)
        yield wait_until(lambda: len(re.findall(r"config reloaded \(SIGHUP\)", agw.log_text())) == 2, timeout=20)
        # SO_REUSEPORT spreads connections over both workers: every one is refused now.
        for _ in range(8):
            status, _ = yield deferToThread(handshake_status, url, additional_headers={})
            self.assertEqual(status, 401)
        text = yield agw.metrics_text()
        self.assertEqual(samples(text)[("agw_config_reloads_total", frozenset({("result", "success")}))], 1.0)
        self.assertIn("config reloaded (file changed)", agw.log_text())
        self.assertEqual((yield agw.stop()), 0)


class PollingReloaderTests(SynchronousTestCase):
    """Where inotify is missing the file is polled; only a changed file is reloaded, a refused one once."""

    def test_polls_changed_files_once(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("first")
        clock = Clock()
        applied: list[str] = []
        contents = {"good": True}

        def load() -> Any:
            if not contents["good"]:
                raise ConfigError("binds", "broken")
            with open(path) as f:
                return f.read()

        def apply(config: Any) -> Reloaded:
            applied.append(config)
            return Reloaded((), (), None, ())

        registry = CollectorRegistry()
        reloader = ConfigReloader(clock, path, load, apply, registry, sighup=False, inotify=False)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        clock.advance(POLL_SECONDS)
        self.assertEqual(applied, [])  # unchanged: nothing to do
        with open(path, "w") as f:
            f.write("second")
        clock.advance(POLL_SECONDS)
        self.assertEqual(applied, ["second"])
        contents["good"] = False
        with open(path, "w") as f:
            f.write("third")
        for _ in range(3):
            clock.advance(POLL_SECONDS)
        self.assertEqual(registry.get_sample_value("agw_config_reloads_total", {"result": "failure"}), 1.0)
        self.assertEqual(registry.get_sample_value("agw_config_reloads_total", {"result": "success"}), 1.0)
        contents["good"] = True
        with open(path, "w") as f:
            f.write("fourth")
        clock.advance(POLL_SECONDS)
        self.assertEqual(applied, ["second", "fourth"])
