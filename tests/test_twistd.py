"""
The walkthrough as a user runs it: C{twistd -n agw -f config.yaml} in a
subprocess (the seed config plus hostOverride), a Realtime session and a
chat completion through it, the metric on /metrics, SIGTERM, exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import treq
import yaml
from openai import OpenAI
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.testing import REALTIME_MODEL, FakeOpenAI
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    REPO,
    SEED_CONFIG,
    TwistdAgw,
    open_client,
    recv_event,
    run_session,
    samples,
    wait_until,
)


class TwistdTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_walkthrough_under_twistd(self) -> Any:
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        agw = yield TwistdAgw.start(self, upstream.getHost().port)
        port = agw.port

        done = yield deferToThread(run_session, f"ws://127.0.0.1:{port}/v1", 3)
        self.assertEqual(len(done), 3)

        def completion() -> str:
            with OpenAI(api_key=CLIENT_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0) as client:
                return client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}]).model

        model = yield deferToThread(completion)
        self.assertEqual(model, "gpt-4-2025-01-01")
        text = yield agw.metrics_text()
        billed = fake.billed()
        for token_type in ("input", "output"):
            expected = billed[("chat", REALTIME_MODEL, token_type)]
            self.assertIn(
                f'agentgateway_gen_ai_client_token_usage_sum{{bind="{port}",gateway="bind/{port}",gen_ai_operation_name="chat",'
                f'gen_ai_request_model="gpt-realtime",gen_ai_response_model="{REALTIME_MODEL}",gen_ai_system="openai",'
                f'gen_ai_token_type="{token_type}",listener="listener0",route="route0",route_rule=""}} {float(expected)}',
                text,
            )
        code = yield agw.stop()
        self.assertEqual(code, 0)
        written = agw.log_text()
        self.assertNotIn(BACKEND_KEY, written)
        self.assertNotIn(CLIENT_KEY, written)


class ProcessRobustnessTests(TestCase):
    timeout = 60

    def seed_config(self, port: int) -> str:
        with open(SEED_CONFIG) as f:
            config = yaml.safe_load(f)
        config["binds"][0]["port"] = port
        config["config"] = {"statsAddr": "127.0.0.1:0", "readinessAddr": "127.0.0.1:0", "adminAddr": "127.0.0.1:0"}
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    @inlineCallbacks
    def test_port_in_use_exits_non_zero_with_one_line(self) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {**os.environ, "OPENAI_API_KEY": BACKEND_KEY, "PYTHONPATH": REPO}
        for workers in ([], ["--workers", "2"]):
            command = [twistd, "-n", "--pidfile=", "agw", "-f", self.seed_config(port), "-i", "127.0.0.1", *workers]
            done = yield deferToThread(subprocess.run, command, env=env, capture_output=True, timeout=50)
            self.assertEqual(done.returncode, 1, workers)
            lines = [line for line in done.stdout.decode().splitlines() if "cannot listen" in line]
            self.assertEqual(len(lines), 1, done.stdout)
            self.assertIn(f"bind/{port} cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use", lines[0])
            self.assertNotIn("Traceback", done.stdout.decode() + done.stderr.decode())

    @inlineCallbacks
    def test_second_sigterm_while_draining_is_quiet(self) -> Any:
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        agw = yield TwistdAgw.start(self, upstream.getHost().port, "--drain-period", "2")
        ws = yield deferToThread(open_client, f"ws://127.0.0.1:{agw.port}/v1/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)  # a session keeps the drain going
        agw.process.send_signal(signal.SIGTERM)
        yield wait_until(lambda: not agw.is_ready())
        code = yield agw.stop()  # the second SIGTERM
        self.assertEqual(code, 0)
        written = agw.log_text()
        self.assertNotIn("Unhandled", written)
        self.assertNotIn("Traceback", written)


class ValidateOnlyTests(TestCase):
    """C{twistd agw --validate-only}: check a config without starting anything (agentgateway's flag)."""

    def run_validate(self, path: str, env: dict[str, str] | None = None, *args: str) -> Any:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [twistd, "-n", "--pidfile=", "agw", "-f", path, "-i", "127.0.0.1", *(args or ("--validate-only",))]
        environ = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
        return deferToThread(subprocess.run, command, env=environ, capture_output=True, timeout=50, text=True)

    @inlineCallbacks
    def test_seed_config_is_valid(self) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with open(os.path.join(REPO, "config.yaml")) as f:
            config = yaml.safe_load(f)
        # A port in use does not matter: nothing is bound.
        config["binds"][0]["port"] = port
        config["config"] = {"database": {"url": "postgresql://agw:hunter2@db.example/agw"}}
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        done = yield self.run_validate(path, {"OPENAI_API_KEY": BACKEND_KEY})
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(f"{path}: valid", done.stdout)
        self.assertIn(f"bind/{port}: 127.0.0.1:{port}", done.stdout)
        self.assertIn("stats: [::]:15020", done.stdout)
        self.assertIn("budgets: postgresql", done.stdout)
        for secret in (BACKEND_KEY, "hunter2"):
            self.assertNotIn(secret, done.stdout + done.stderr)

    @inlineCallbacks
    def test_invalid_config_one_line_exit_1(self) -> Any:
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write("binds:\n- port: 3000\n  listeners:\n  - routes:\n"
                    "    - backends: [{ai: {name: x, provider: {openAI: {}}}}]\n      policies: {bogus: 1}\n")
        done = yield self.run_validate(path)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, "")
        self.assertEqual(done.stderr.strip().splitlines(),
                         [f"binds[0].listeners[0].routes[0].policies.bogus: unknown field ({path}, line 6)"])
        # Started for real, the same: one line on standard error, no usage text.
        done = yield self.run_validate(path, None, "--access-log", "json")
        self.assertEqual((done.returncode, done.stdout), (1, ""))
        self.assertEqual(done.stderr.strip().splitlines(),
                         [f"binds[0].listeners[0].routes[0].policies.bogus: unknown field ({path}, line 6)"])


class DemoTests(TestCase):
    """C{twistd -n agw -f config.yaml --demo}, as the README says, on a machine without an OpenAI key."""

    def test_readmes_first_command_is_the_demo(self) -> None:
        with open(os.path.join(REPO, "README.md")) as f:
            first = re.findall(r"```sh\n(.*?)\n```", f.read(), re.S)[0]
        self.assertTrue(first.endswith("pip install . && twistd -n agw -f config.yaml --demo"), first)
        self.assertNotIn("OPENAI_API_KEY", first)  # the one command needs no key

    @inlineCallbacks
    def test_demo_counts_tokens_without_a_key(self) -> Any:
        agw = yield TwistdAgw.start(self, None, "--demo", key=None)
        self.addCleanup(agw.stop)
        yield self.check_demo(agw)

    @inlineCallbacks
    def test_demo_with_a_real_key_set_does_not_use_it(self) -> Any:
        # The key is kept from the fake too: the demo is where a newcomer
        # runs agw with the key still exported from yesterday.
        agw = yield TwistdAgw.start(self, None, "--demo", key=BACKEND_KEY)
        self.addCleanup(agw.stop)
        response = yield treq.get(f"http://127.0.0.1:{agw.port}/v1/models", persistent=False)
        self.assertEqual(response.code, 200)
        echoed = yield response.json()  # the fake echoes what reached it
        self.assertEqual(echoed["headers"]["authorization"], "Bearer demo")
        yield self.check_demo(agw)

    @inlineCallbacks
    def check_demo(self, agw: TwistdAgw) -> Any:
        with open(agw.stdout) as f:
            instructions = f.read()
        self.assertIn(f"curl -s http://127.0.0.1:{agw.port}/v1/chat/completions", instructions)
        self.assertIn(f"curl -s http://127.0.0.1:{agw.stats}/metrics", instructions)

        def chat() -> Any:
            with OpenAI(api_key="demo", base_url=f"http://127.0.0.1:{agw.port}/v1", max_retries=0) as client:
                return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        completion = yield deferToThread(chat)
        done = yield deferToThread(run_session, f"ws://127.0.0.1:{agw.port}/v1", 1)
        text = yield agw.metrics_text()
        found = samples(text)
        usage = {
            dict(labels)["route"]: value  # the seed config: route0 Realtime, route1 the HTTP API
            for (name, labels), value in found.items()
            if name == "agentgateway_gen_ai_client_token_usage_sum" and dict(labels)["gen_ai_token_type"] == "input"
        }
        self.assertEqual(usage, {"route1": completion.usage.prompt_tokens, "route0": done[0]["response"]["usage"]["input_tokens"]})
        # Both are priced: the seed's gpt-4 (answered as a dated gpt-4-...) and gpt-realtime are in the default catalog.
        lookups = {
            (dict(labels)["gen_ai_request_model"], dict(labels)["status"]) for (name, labels), value in found.items()
            if name == "agentgateway_cost_catalog_lookups_total" and value
        }
        self.assertEqual(lookups, {("gpt-4", "Exact"), ("gpt-realtime", "Exact")})
        # The operator's page is served on adminAddr, with what the demo spent.
        self.assertIn(f"open http://127.0.0.1:{agw.admin}/ in a browser", instructions)
        page = yield treq.get(f"http://127.0.0.1:{agw.admin}/", persistent=False)
        self.assertEqual((page.code, (yield page.text()).startswith("<!doctype html>")), (200, True))
        costs = yield treq.get(f"http://127.0.0.1:{agw.admin}/api/costs", persistent=False)
        self.assertEqual(sum(entry["records"] for entry in (yield costs.json())["costs"]), 2)
        code = yield agw.stop()
        self.assertEqual(code, 0)


class JSONLogTests(TestCase):
    """--log-format json: standard output holds JSON lines only, the process's events and the access log alike."""

    @inlineCallbacks
    def test_only_json_lines_and_no_connection_chatter(self) -> Any:
        agw = yield TwistdAgw.start(self, None, "--demo", "--log-format", "json", access_log="json", key=None)
        self.addCleanup(agw.stop)

        def chat() -> Any:
            with OpenAI(api_key="demo", base_url=f"http://127.0.0.1:{agw.port}/v1", max_retries=0) as client:
                return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        yield deferToThread(chat)
        yield deferToThread(run_session, f"ws://127.0.0.1:{agw.port}/v1", 1)
        code = yield agw.stop()
        self.assertEqual(code, 0)
        with open(agw.stdout) as f:
            lines = f.read().splitlines()
        records = [json.loads(line) for line in lines]  # each line is one JSON object
        events = {record["event"] for record in records}
        self.assertTrue({"log", "http", "realtime.response", "realtime.session"} <= events, events)
        messages = [record["message"] for record in records if record["event"] == "log"]
        self.assertTrue(any("listening on" in message for message in messages))
        self.assertTrue(any("curl -s" in message for message in messages))  # the demo's instructions, as a log event
        self.assertFalse([m for m in messages if "Starting factory" in m or "Stopping factory" in m])
        self.assertEqual({record["level"] for record in records if record["event"] == "log"} - {"info", "warn", "error", "critical"}, set())
