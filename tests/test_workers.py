"""
C{twistd -n agw --workers 2} as a user runs it: sessions spread over both
workers, one /metrics summing them, readiness as a quorum, a killed
worker restarted (its counts kept), SIGTERM stopping every process, exit 0.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus

from agw.serve._workermetrics import WorkerMetrics, fold_dead_worker_metrics, remove_stale_metrics_dirs
from agw.testing import REALTIME_MODEL, FakeOpenAI
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    PostgresServer,
    TwistdAgw,
    free_port,
    open_client,
    recv_event,
    samples,
    token_sums,
    wait_closed,
    wait_until,
)
from tests.test_admin_page import respond

SESSIONS = 16


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_response(url: str) -> None:
    """A blocking session (in a thread): one text response, then close."""
    with open_client(url) as ws:
        recv_event(ws)
        ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        while recv_event(ws)["type"] != "response.done":
            pass


def samples_now(agw: TwistdAgw) -> dict:
    """The pool's /metrics samples, read synchronously (for polling)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agw.stats}/metrics", timeout=5) as response:
        return samples(response.read().decode())


class WorkerPoolTests(TestCase):
    timeout = 90

    def worker_pids(self, agw: TwistdAgw) -> dict[int, int]:
        """Worker number: pid of its latest start, from the pool's log."""
        return {int(n): int(pid) for n, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", agw.log_text())}

    def served_by(self, agw: TwistdAgw) -> Counter[int]:
        """Realtime sessions per worker, from the access log (agw's standard output)."""
        with open(agw.stdout) as f:
            records = [json.loads(line) for line in f if line.strip()]
        return Counter(r["agw.worker"] for r in records if r["event"] == "realtime.session")

    @inlineCallbacks
    def test_two_workers(self) -> Any:
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        agw = yield TwistdAgw.start(self, upstream.getHost().port, "--workers", "2", access_log="json")
        url = f"ws://127.0.0.1:{agw.port}/v1/realtime?model=gpt-realtime"
        # Ready once one worker is (a quorum); both are, soon after.
        yield wait_until(lambda: samples_now(agw).get(("agw_workers_ready", frozenset())) == 2.0, timeout=30)

        # Worker log events reach the pool's log (Twisted JSON records over a pipe).
        self.assertRegex(agw.log_text(), r"\[worker [12]\] bind/\d+ listening on 127\.0\.0\.1:\d+")

        # Spread: each new connection hashes to one worker's accept queue.
        for _ in range(SESSIONS):
            yield deferToThread(one_response, url)
        yield wait_until(lambda: sum(self.served_by(agw).values()) == SESSIONS)
        spread = self.served_by(agw)
        self.assertEqual(set(spread), {1, 2}, spread)

        # One /metrics for all workers: equal to what the upstream billed.
        text = yield agw.metrics_text()
        billed = fake.billed()
        for token_type in ("input", "output"):
            self.assertEqual(token_sums(samples(text))[("chat", REALTIME_MODEL, token_type)], billed[("chat", REALTIME_MODEL, token_type)])

        # A worker killed outright is restarted; the other one serves
        # meanwhile (readiness is a quorum); what the dead one counted still
        # counts, folded into one file instead of its own.
        pids = self.worker_pids(agw)
        os.kill(pids[1], signal.SIGKILL)
        yield wait_until(lambda: self.worker_pids(agw)[1] != pids[1], timeout=30)
        self.assertTrue(agw.is_ready())
        yield wait_until(lambda: samples_now(agw).get(("agw_workers_ready", frozenset())) == 2.0, timeout=30)
        text = yield agw.metrics_text()
        self.assertEqual(samples(text)[("agw_worker_restarts_total", frozenset())], 1.0)
        (metrics_dir,) = glob.glob(os.path.join(tempfile.gettempdir(), f"agw-metrics-{agw.process.pid}-*"))
        files = os.listdir(metrics_dir)
        self.assertIn("counter_dead.db", files)
        self.assertEqual([f for f in files if f.endswith(f"_{pids[1]}.db")], [])
        # A worker's file caught between its creation and its sizing: the page is still served.
        open(os.path.join(metrics_dir, "counter_999999.db"), "wb").close()
        self.assertEqual(samples_now(agw)[("agw_worker_restarts_total", frozenset())], 1.0)
        for _ in range(4):
            yield deferToThread(one_response, url)
        text = yield agw.metrics_text()
        billed = fake.billed()
        self.assertEqual(len(fake.sessions), SESSIONS + 4)
        for token_type in ("input", "output"):
            self.assertEqual(token_sums(samples(text))[("chat", REALTIME_MODEL, token_type)], billed[("chat", REALTIME_MODEL, token_type)])
        self.assertIn('agw_realtime_sessions{bind="%d"' % agw.port, text)

        # SIGTERM stops every process; exit 0; no secret in the log. A service manager signals the
        # whole group: each worker gets one SIGTERM of its own, then one from the pool.
        pids = self.worker_pids(agw)
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        code = yield agw.stop()
        self.assertEqual(code, 0)
        self.assertEqual([pid for pid in pids.values() if alive(pid)], [])
        written = agw.log_text()
        self.assertNotIn("ReactorNotRunning", written)  # a second SIGTERM is no error
        self.assertNotIn(BACKEND_KEY, written)
        self.assertNotIn(CLIENT_KEY, written)


class MetricsDirectoryTests(TestCase):
    def write_counter(self, directory: str, amount: float) -> int:
        """A process that counts C{amount} in multiprocess mode and exits; its pid."""
        code = (
            "from prometheus_client import Counter\n"
            f"Counter('agw_test', 'test', ['k']).labels('v').inc({amount})\n"
        )
        process = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}, check=True)
        del process
        return int(max(os.listdir(directory), key=lambda f: os.path.getmtime(os.path.join(directory, f))).split("_")[1][:-3])

    def total(self, directory: str) -> float:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return registry.get_sample_value("agw_test_total", {"k": "v"})

    def test_dead_workers_are_folded_not_lost(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        first, second = self.write_counter(directory, 2), self.write_counter(directory, 3)
        fold_dead_worker_metrics(first, directory)
        fold_dead_worker_metrics(second, directory)
        self.assertEqual(sorted(os.listdir(directory)), ["counter_dead.db"])
        self.assertEqual(self.total(directory), 5.0)
        third = self.write_counter(directory, 4)
        self.assertEqual(self.total(directory), 9.0)
        fold_dead_worker_metrics(third, directory)
        self.assertEqual(self.total(directory), 9.0)

    def test_a_starting_workers_metrics_file_is_skipped(self) -> None:
        """
        A worker's metrics file is created empty, then sized: a scrape in
        between used to fail (C{struct.error}, /metrics answered 500). The
        pool's collector skips what it cannot read yet, and a file cut short.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        self.write_counter(directory, 2)
        open(os.path.join(directory, "counter_999999.db"), "wb").close()  # opened, not yet sized
        with open(os.path.join(directory, "histogram_999998.db"), "wb") as f:
            f.write(b"\x00\x10\x00\x00\x00\x00\x00\x00\x05")  # says 4096 bytes used: cut short
        with self.assertRaises(struct.error):
            self.total(directory)  # prometheus-client's own collector: the old 500
        registry = CollectorRegistry()
        registry.register(WorkerMetrics(lambda: directory))
        self.assertEqual(registry.get_sample_value("agw_test_total", {"k": "v"}), 2.0)

    def test_stale_directories_of_killed_parents_are_removed(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        for name in (f"agw-metrics-{dead.pid}-abc", f"agw-metrics-{os.getpid()}-def", "agw-metrics-xyz", "other"):
            os.makedirs(os.path.join(directory, name))
        self.assertEqual(remove_stale_metrics_dirs(directory), [f"agw-metrics-{dead.pid}-abc"])
        self.assertEqual(sorted(os.listdir(directory)), sorted([f"agw-metrics-{os.getpid()}-def", "agw-metrics-xyz", "other"]))


class WorkerBudgetTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_two_workers_charge_one_budget(self) -> Any:
        """Sessions on both workers charge one SQLite ledger; the parent's /budgets shows the sum."""
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        admin = free_port()

        def with_budget(config: dict) -> None:
            config["config"].update({"database": {"url": database}, "adminAddr": f"127.0.0.1:{admin}"})
            for route in config["binds"][0]["listeners"][0]["routes"]:
                route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": CLIENT_KEY, "metadata": {"name": "team"},
                    "budgets": [{"name": "tokens", "limit": {"unit": "Tokens", "amount": 10**9}, "window": {"rolling": "24h"}}]}]}

        agw = yield TwistdAgw.start(self, upstream.getHost().port, "--workers", "2", access_log="json", edit=with_budget)
        yield wait_until(lambda: samples_now(agw).get(("agw_workers_ready", frozenset())) == 2.0, timeout=30)
        url = f"ws://127.0.0.1:{agw.port}/v1/realtime?model=gpt-realtime"
        for _ in range(SESSIONS):
            yield deferToThread(one_response, url)
        with open(agw.stdout) as f:
            workers = {json.loads(line)["agw.worker"] for line in f if '"realtime.session"' in line}
        self.assertEqual(workers, {1, 2})
        billed = sum(entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in fake.ledger)

        def spent() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/budgets", timeout=5) as response:
                return json.loads(response.read())["consumers"][0]["budgets"][0]["spent"]

        deadline = reactor.seconds() + 20
        while (yield deferToThread(spent)) != billed and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((yield deferToThread(spent)), billed)
        code = yield agw.stop()
        self.assertEqual(code, 0)


class WorkerAdminPageTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_the_parents_page_gathers_the_workers_sessions(self) -> Any:
        """
        Sessions live in the workers; the parent's /api/sessions lists every
        worker's (ids made the pool's), /api/costs sums them, and a session
        ended through the parent closes 1000 in its worker.
        """
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        agw = yield TwistdAgw.start(self, upstream.getHost().port, "--workers", "2")
        yield wait_until(lambda: samples_now(agw).get(("agw_workers_ready", frozenset())) == 2.0, timeout=30)
        url = f"ws://127.0.0.1:{agw.port}/v1/realtime?model=gpt-realtime"
        clients = []
        for _ in range(4):
            ws = yield deferToThread(open_client, url)
            self.addCleanup(deferToThread, ws.close)
            yield deferToThread(recv_event, ws)
            yield deferToThread(respond, ws)
            clients.append(ws)

        def get(path: str) -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{agw.admin}{path}", timeout=5) as response:
                return json.loads(response.read())

        listed = yield deferToThread(get, "/api/sessions")
        self.assertEqual(listed["workers"], [{"index": 1, "reachable": True}, {"index": 2, "reachable": True}])
        self.assertEqual(len(listed["sessions"]), 4)
        for session in listed["sessions"]:
            self.assertRegex(session["id"], rf"^w{session['worker']}\.[0-9a-f]{{16}}$")
            self.assertGreater(session["cost_usd"], 0)
        costs = yield deferToThread(get, "/api/costs")
        self.assertEqual(sum(entry["records"] for entry in costs["costs"]), 4)

        def close(session_id: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{agw.admin}/api/sessions/{session_id}/close", data=b"{}",
                headers={"Content-Type": "application/json"}, method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)

        for session in listed["sessions"]:
            self.assertEqual((yield deferToThread(close, session["id"])), 202)
        for ws in clients:
            self.assertEqual((yield deferToThread(wait_closed, ws)), (1000, "closed by operator"))
        yield wait_until(lambda: get("/api/sessions")["sessions"] == [], timeout=10)
        code = yield agw.stop()
        self.assertEqual(code, 0)


class TwoProcessesOnePostgresTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_two_agw_processes_share_one_budget(self) -> Any:
        """Spend through one twistd agw process is refused by another on the same PostgreSQL."""
        server = PostgresServer(self)
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)

        def with_budget(config: dict) -> None:
            config["config"].update({"database": {"url": server.url}, "adminAddr": f"127.0.0.1:{free_port()}"})
            for route in config["binds"][0]["listeners"][0]["routes"]:
                route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": CLIENT_KEY, "metadata": {"name": "team"},
                    "budgets": [{"name": "tokens", "limit": {"unit": "Tokens", "amount": 20}, "window": {"rolling": "24h"}}]}]}

        first = yield TwistdAgw.start(self, upstream.getHost().port, edit=with_budget)
        second = yield TwistdAgw.start(self, upstream.getHost().port, edit=with_budget)
        yield deferToThread(one_response, f"ws://127.0.0.1:{first.port}/v1/realtime?model=gpt-realtime")
        self.assertGreater(fake.ledger[0].usage["input_tokens"] + fake.ledger[0].usage["output_tokens"], 20)
        url = f"ws://127.0.0.1:{second.port}/v1/realtime?model=gpt-realtime"
        deadline = reactor.seconds() + 20
        while reactor.seconds() < deadline:
            status = yield deferToThread(refused_status, url)
            if status == 429:
                break
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(status, 429)
        for agw in (first, second):
            code = yield agw.stop()
            self.assertEqual(code, 0)


def refused_status(url: str) -> int | None:
    """The handshake's status if refused, else None (the session is closed at once)."""
    try:
        open_client(url).close()
    except InvalidStatus as e:
        return e.response.status_code
    return None
