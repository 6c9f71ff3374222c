"""The twistd plugin's options and service."""

from __future__ import annotations

import os
import tempfile

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from agw.serve import GatewayService, Options, makeService
from tests.support import SEED_CONFIG


class OptionsTests(SynchronousTestCase):
    def test_seed_config_makes_service(self) -> None:
        os.environ["OPENAI_API_KEY"] = "sk-x"
        self.addCleanup(os.environ.pop, "OPENAI_API_KEY")
        options = Options()
        options.parseOptions(["-f", SEED_CONFIG, "--upstream-timeout", "7"])
        service = makeService(options)
        self.assertIsInstance(service, GatewayService)
        self.assertEqual(list(service.binds), [3000])
        self.assertEqual(service.gateway.http_client.options.response_timeout, 7.0)

    def test_bad_config_is_one_line_and_exit_1(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("binds:\n- port: 1\n  nonsense: 2\n")
        self.addCleanup(os.unlink, f.name)
        with self.assertRaises(SystemExit) as e:  # not a UsageError: twistd would print its usage text first
            Options().parseOptions(["-f", f.name])
        self.assertEqual(str(e.exception), f"binds[0].nonsense: unknown field ({f.name}, line 3)")

    def test_plugin_names_the_service_maker(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("agw", names)


class WorkersOptionTests(SynchronousTestCase):
    def options(self, *args: str, config: str = "") -> Options:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("binds:\n- port: 1\n" + config)
        self.addCleanup(os.unlink, f.name)
        options = Options()
        options.parseOptions(["-f", f.name, *args])
        return options

    def test_option_beats_config_and_zero_means_one_per_cpu(self) -> None:
        self.assertEqual(self.options().worker_count, 1)
        self.assertEqual(self.options(config="config:\n  workers: 3\n").worker_count, 3)
        self.assertEqual(self.options("--workers", "2", config="config:\n  workers: 3\n").worker_count, 2)
        self.assertEqual(self.options("--workers", "0").worker_count, os.cpu_count())

    def test_negative_is_usage_error(self) -> None:
        with self.assertRaises(UsageError):
            self.options("--workers", "-2")

    def test_several_workers_make_a_pool_and_pass_every_other_option_on(self) -> None:
        from agw.serve._workerpool import WorkerPool

        options = self.options("--workers", "2", "--cancel-grace", "1.5")
        service = makeService(options)
        self.assertIsInstance(service, WorkerPool)
        self.assertEqual(len(service.workers), 2)
        arguments = options.gateway_arguments()
        self.assertIn("--cancel-grace=1.5", arguments)
        self.assertIn(f"--config={os.path.abspath(options['config'])}", arguments)
        self.assertFalse([a for a in arguments if a.startswith("--workers")])


class DefaultOptionTests(SynchronousTestCase):
    def test_defaults_are_numbers(self) -> None:
        """twistd does not coerce defaults: they must already be numbers."""
        os.environ["OPENAI_API_KEY"] = "sk-x"
        self.addCleanup(os.environ.pop, "OPENAI_API_KEY")
        options = Options()
        options.parseOptions(["-f", SEED_CONFIG])
        service = makeService(options)
        relay = service.gateway.relay_options
        self.assertEqual(
            (relay.handshake_timeout, relay.cancel_grace, relay.max_message_size, service.drain_period),
            (10.0, 5.0, 16 * 1024 * 1024, 5.0),
        )
        self.assertIsInstance(service.gateway.http_client.options.response_timeout, float)
        for name in ("upstream-timeout", "drain-period", "handshake-timeout", "cancel-grace"):
            self.assertIsInstance(options[name], float, name)
        self.assertIsInstance(options["max-message-size"], int)


class SIGTERMTests(SynchronousTestCase):
    def test_a_second_sigterm_while_stopping_is_no_error(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        from agw.serve._sigterm import CleanExitOnSIGTERM

        class Stopping:
            stops = 0

            def stop(self) -> None:
                self.stops += 1
                if self.stops > 1:
                    raise ReactorNotRunning("Can't stop reactor that isn't running.")

        reactor = Stopping()
        handler = CleanExitOnSIGTERM()
        handler._stop(reactor)
        handler._stop(reactor)  # would raise (logged as critical by Twisted's handler) without the guard
        self.assertEqual(reactor.stops, 2)


class ClientDeflateOptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        os.environ["OPENAI_API_KEY"] = "sk-x"
        self.addCleanup(os.environ.pop, "OPENAI_API_KEY")

    def options(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["-f", SEED_CONFIG, *args])
        return options

    def test_default_off_and_each_setting_reaches_the_relay(self) -> None:
        from agw.serve._options import gateway_from_options

        self.assertEqual(gateway_from_options(self.options()).relay_options.client_deflate, "off")
        for setting in ("small", "accept", "off"):
            options = self.options("--client-deflate", setting)
            self.assertEqual(gateway_from_options(options).relay_options.client_deflate, setting)
            self.assertIn(f"--client-deflate={setting}", options.gateway_arguments())  # workers get it too

    def test_unknown_setting_is_usage_error(self) -> None:
        with self.assertRaises(UsageError) as e:
            self.options("--client-deflate", "fast")
        self.assertEqual(str(e.exception), "--client-deflate: expected one of off, small, accept; got 'fast'")
