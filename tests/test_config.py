"""Config parsing: the seed file, and one clear line for each kind of bad input."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from agw.config import Address, BackendTLS, ConfigError, RouteType, load_config, parse_config
from tests.support import SEED_CONFIG

ENV = {"OPENAI_API_KEY": "sk-secret-value"}


def route_yaml(policies: str = "", backend: str = "      - ai:\n          name: openai\n          provider:\n            openAI: {}\n") -> str:
    return "binds:\n- port: 3000\n  listeners:\n  - routes:\n    - backends:\n" + backend + policies


class SeedConfigTests(SynchronousTestCase):
    def test_seed_parses(self) -> None:
        config = load_config(SEED_CONFIG, ENV)
        (bind,) = config.binds
        self.assertEqual(bind.port, 3000)
        realtime, rest = bind.listeners[0].routes
        self.assertEqual(realtime.matches[0].path.kind, "pathPrefix")
        self.assertEqual(realtime.matches[0].path.value, "/v1/realtime")
        self.assertEqual(realtime.policies.ai_routes, (("/v1/realtime", RouteType.REALTIME),))
        self.assertEqual(realtime.policies.backend_key.value, "sk-secret-value")
        self.assertEqual(realtime.policies.request_headers.remove, ("sec-websocket-extensions",))
        self.assertEqual(rest.backends[0].model, "gpt-4")
        self.assertEqual(
            rest.policies.ai_routes,
            (("/v1/chat/completions", RouteType.COMPLETIONS), ("*", RouteType.PASSTHROUGH)),
        )
        self.assertEqual(config.stats_addr, Address("::", 15020))
        self.assertEqual(config.readiness_addr, Address("::", 15021))

    def test_backend_tls(self) -> None:
        config = parse_config(route_yaml("      policies:\n        backendTLS:\n          root: ca.pem\n          hostname: api.test\n"), ENV)
        self.assertEqual(config.binds[0].listeners[0].routes[0].policies.backend_tls, BackendTLS(root="ca.pem", hostname="api.test"))

    def test_secret_not_in_repr(self) -> None:
        self.assertNotIn("sk-secret-value", repr(load_config(SEED_CONFIG, ENV)))

    def test_braced_and_escaped_variables(self) -> None:
        text = route_yaml("      policies:\n        backendAuth:\n          key: \"${OPENAI_API_KEY}-$$x\"\n")
        config = parse_config(text, ENV)
        self.assertEqual(config.binds[0].listeners[0].routes[0].policies.backend_key.value, "sk-secret-value-$x")

    def test_keys_lose_the_newline_a_secret_file_ends_with(self) -> None:
        """A Kubernetes secret (or `echo > file`) ends in a newline; the key is the text before it."""
        text = route_yaml(
            "      policies:\n        backendAuth:\n          key: \"$OPENAI_API_KEY\"\n"
            "        apiKey:\n          keys:\n          - key: \"sk-client\\n\"\n"
        )
        policies = parse_config(text, {"OPENAI_API_KEY": "sk-secret-value\r\n"}).binds[0].listeners[0].routes[0].policies
        self.assertEqual(policies.backend_key.value, "sk-secret-value")
        self.assertEqual(policies.api_key.keys[0].digest, parse_config(
            text.replace("sk-client\\n", "sk-client"), ENV,
        ).binds[0].listeners[0].routes[0].policies.api_key.keys[0].digest)

    def test_comments_are_not_expanded(self) -> None:
        parse_config("# $schema=https://example\nbinds:\n- port: 1\n", {})


class BadConfigTests(SynchronousTestCase):
    def error(self, text: str, environ: dict[str, str] | None = None) -> str:
        with self.assertRaises(ConfigError) as e:
            parse_config(text, ENV if environ is None else environ, source="c.yaml")
        message = str(e.exception)
        self.assertNotIn("\n", message)
        self.assertNotIn("sk-secret-value", message)
        return message

    def test_unset_variable_named(self) -> None:
        with open(SEED_CONFIG) as f:
            message = self.error(f.read(), {})
        self.assertEqual(
            message,
            "binds[0].listeners[0].routes[0].policies.backendAuth.key: environment variable OPENAI_API_KEY is not set (c.yaml, line 19)",
        )

    def test_a_key_with_a_line_break_inside(self) -> None:
        """Not a key a secret file's end explains: refused, without showing it."""
        message = self.error(route_yaml("      policies:\n        backendAuth:\n          key: \"$OPENAI_API_KEY\"\n"), {
            "OPENAI_API_KEY": "sk-secret-value\nX-Injected: 1",
        })
        self.assertIn("policies.backendAuth.key: a key cannot contain control characters", message)

    def test_unknown_key_with_path_and_line(self) -> None:
        message = self.error(route_yaml("      policies:\n        ai:\n          routs: {}\n"))
        self.assertEqual(message, "binds[0].listeners[0].routes[0].policies.ai.routs: unknown field (c.yaml, line 12)")

    def test_unsupported_agentgateway_key(self) -> None:
        message = self.error(route_yaml("      policies:\n        cors: {}\n"))
        self.assertIn("policies.cors: supported by agentgateway but not by agw yet", message)

    def test_backend_tls_fields_agw_does_not_implement(self) -> None:
        message = self.error(route_yaml("      policies:\n        backendTLS:\n          insecure: true\n"))
        self.assertIn("policies.backendTLS.insecure: supported by agentgateway but not by agw yet", message)

    def test_unsupported_provider(self) -> None:
        message = self.error(route_yaml(backend="      - ai:\n          name: a\n          provider:\n            anthropic: {}\n"))
        self.assertIn("provider.anthropic: supported by agentgateway but not by agw yet", message)

    def test_wrong_types(self) -> None:
        self.assertIn("binds[0].port: expected a port number", self.error("binds:\n- port: eighty\n"))
        self.assertIn("binds: expected a list, got a mapping", self.error("binds: {}\n"))
        self.assertIn("expected a string, got an integer", self.error(route_yaml("      policies:\n        backendAuth:\n          key: 12\n")))

    def test_bad_route_type(self) -> None:
        message = self.error(route_yaml("      policies:\n        ai:\n          routes:\n            /x: chatty\n"))
        self.assertIn("policies.ai.routes./x: unknown route type 'chatty'", message)

    def test_route_types_agw_does_not_serve_are_refused(self) -> None:
        for kind in ("messages", "detect"):
            message = self.error(route_yaml(f"      policies:\n        ai:\n          routes:\n            /v1/messages: {kind}\n"))
            self.assertIn(f"policies.ai.routes./v1/messages: route type {kind} is supported by agentgateway but not by agw yet", message)

    def test_bad_regex(self) -> None:
        text = "binds:\n- port: 1\n  listeners:\n  - routes:\n    - matches:\n      - path:\n          regex: '('\n"
        self.assertIn("matches[0].path.regex: invalid regex", self.error(text))

    def test_malformed_yaml_has_line(self) -> None:
        self.assertIn("invalid YAML", self.error("binds:\n- port: [\n"))

    def test_missing_binds(self) -> None:
        self.assertEqual(self.error("config: {}\n"), "binds: expected a list, got nothing (c.yaml, line 1)")

    def test_bad_address(self) -> None:
        self.assertIn("config.statsAddr: expected host:port", self.error("binds:\n- port: 1\nconfig:\n  statsAddr: nowhere\n"))

    def test_bad_workers(self) -> None:
        for value in ("-1", "two", "true", "1.5"):
            self.assertIn("config.workers: expected a number of processes", self.error(f"binds:\n- port: 1\nconfig:\n  workers: {value}\n"))

    def test_duplicate_port(self) -> None:
        self.assertIn("binds[1].port: port 1 is bound twice", self.error("binds:\n- port: 1\n- port: 1\n"))

    def test_unreadable_file(self) -> None:
        with self.assertRaises(ConfigError) as e:
            load_config(os.path.join(os.path.dirname(SEED_CONFIG), "no-such.yaml"), {})
        self.assertIn("cannot read", str(e.exception))
