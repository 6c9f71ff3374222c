"""
The walkthrough as a user runs it: C{twistd -n agw -f config.yaml} in a
subprocess (the seed config plus hostOverride), a Realtime session and a
chat completion through it, the metric on /metrics, SIGTERM, exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import treq
import yaml
from openai import OpenAI
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.testing import REALTIME_MODEL, FakeOpenAI
from tests.support import BACKEND_KEY, CLIENT_KEY, REPO, SEED_CONFIG, open_client, recv_event, run_session, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class TwistdAgw:
    """
    C{twistd -n agw} in a subprocess: the seed config with hostOverride to
    C{upstream_port}, free ports, its log and standard output in files.
    """

    def __init__(self, process: subprocess.Popen, port: int, stats: int, ready: int, log: str, stdout: str) -> None:
        self.process, self.port, self.stats, self.ready, self.log, self.stdout = process, port, stats, ready, log, stdout

    @classmethod
    @inlineCallbacks
    def start(cls, case: TestCase, upstream_port: int, *args: str, access_log: str = "none") -> Any:
        with open(SEED_CONFIG) as f:
            config = yaml.safe_load(f)
        port, stats, ready = free_port(), free_port(), free_port()
        config["binds"][0]["port"] = port
        for route in config["binds"][0]["listeners"][0]["routes"]:
            route["backends"][0]["ai"]["hostOverride"] = f"127.0.0.1:{upstream_port}"
        config["config"] = {"statsAddr": f"127.0.0.1:{stats}", "readinessAddr": f"127.0.0.1:{ready}"}
        path = case.mktemp() + ".yaml"
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        log, stdout = case.mktemp() + ".log", case.mktemp() + ".out"
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {**os.environ, "OPENAI_API_KEY": BACKEND_KEY, "PYTHONPATH": REPO}
        with open(stdout, "wb") as out:
            process = subprocess.Popen(
                [twistd, "-n", "--pidfile=", f"--logfile={log}", "agw", "-f", path, "-i", "127.0.0.1", "--access-log", access_log, *args],
                env=env, stdout=out,
            )
        case.addCleanup(lambda: process.poll() is None and process.kill())
        agw = cls(process, port, stats, ready, log, stdout)
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
        config["config"] = {"statsAddr": "127.0.0.1:0", "readinessAddr": "127.0.0.1:0"}
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
