"""
Reloads at their edges: a bind a reload removed serves nothing more, not
even on a keep-alive connection opened before; a file the new config
names that cannot be read when it is applied refuses the whole reload
(nothing of it is half applied), and a watcher that polls goes on polling
after a reload failed in any way.
"""

from __future__ import annotations

import socket
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.config import parse_config
from agw.serve import ConfigReloader, Reloaded, ReloadRefused
from agw.serve._reload import POLL_SECONDS
from tests.support import BACKEND_KEY, CLIENT_KEY, free_port, on_twisted_web, seed_config_text
from tests.wire_support import gateway_to, ok, read_response, status_and_error

ENV = {"OPENAI_API_KEY": BACKEND_KEY}



class RemovedBindTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.extra = free_port()

        def second_bind(config: dict) -> None:
            config["binds"].append({"port": self.extra, "listeners": config["binds"][0]["listeners"]})

        self.upstream, self.port, self.gateway, self.service = yield gateway_to(self, ok, second_bind)

    @inlineCallbacks
    def test_a_removed_bind_serves_no_more_on_an_open_connection(self) -> Any:
        sock = socket.create_connection(("127.0.0.1", self.extra), timeout=10)
        self.addCleanup(sock.close)
        get = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"
        yield deferToThread(sock.sendall, get)
        head, _, _ = yield deferToThread(read_response, sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.service.reload(parse_config(seed_config_text(1), ENV))  # the second bind is gone
        yield deferToThread(sock.sendall, get)  # the same keep-alive connection, after the reload
        refused = yield deferToThread(read_response, sock)
        self.assertEqual(status_and_error(refused)[0], 404)
        self.assertEqual(len(self.upstream.requests), 1)


class UnreadableFileTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, self.gateway, self.service = yield gateway_to(self, ok)
        self.before = self.gateway.config

    def new_config(self, edit: Any) -> Any:
        data = yaml.safe_load(seed_config_text(1))
        for route in data["binds"][0]["listeners"][0]["routes"]:
            route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": CLIENT_KEY}]}  # would refuse keyless clients
        edit(data)
        return parse_config(yaml.safe_dump(data), ENV)

    @inlineCallbacks
    def assert_nothing_applied(self) -> Any:
        self.assertIs(self.gateway.config, self.before)
        connection = yield deferToThread(socket.create_connection, ("127.0.0.1", self.port), 10)
        with connection as sock:
            yield deferToThread(sock.sendall, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            head, _, _ = yield deferToThread(read_response, sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)  # no key asked: the old routes serve

    @inlineCallbacks
    def test_a_trust_root_gone_by_the_time_of_applying(self) -> Any:
        def with_root(data: dict) -> None:
            data["binds"][0]["listeners"][0]["routes"][1]["policies"]["backendTLS"] = {"root": self.mktemp()}

        self.assertRaises(ReloadRefused, self.service.reload, self.new_config(with_root))
        yield self.assert_nothing_applied()

    @inlineCallbacks
    def test_a_catalog_gone_by_the_time_of_applying(self) -> Any:
        def with_catalog(data: dict) -> None:
            data["config"]["modelCatalog"] = [{"file": self.mktemp()}]

        self.assertRaises(ReloadRefused, self.service.reload, self.new_config(with_catalog))
        yield self.assert_nothing_applied()


class PollingGoesOnTests(SynchronousTestCase):
    def test_polling_survives_a_reload_that_failed_unexpectedly(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("first")
        clock, applied = Clock(), []

        def load() -> str:
            with open(path) as f:
                return f.read()

        def apply(config: str) -> Reloaded:
            if config == "second":
                raise OSError("a file it names vanished")  # neither ConfigError nor ReloadRefused
            applied.append(config)
            return Reloaded((), (), None, ())

        reloader = ConfigReloader(clock, path, load, apply, sighup=False, inotify=False)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        for text in ("second", "third"):
            with open(path, "w") as f:
                f.write(text)
            clock.advance(POLL_SECONDS)
        self.assertEqual(applied, ["third"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebRemovedBindTests = on_twisted_web(RemovedBindTests)
