"""
docs/grafana/agw.json and docs/prometheus/agw-rules.yml against a real
Prometheus (Debian's package; .ci/run installs it) scraping agw on loopback:
after Realtime sessions, refusals, HTTP errors and a worker restart, every
dashboard query returns data and every alert fires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from agw.testing import FakeOpenAI
from tests.support import CLIENT_KEY, REPO, TwistdAgw, free_port, handshake_status, run_session

DASHBOARD = os.path.join(REPO, "docs", "grafana", "agw.json")
RULES = os.path.join(REPO, "docs", "prometheus", "agw-rules.yml")
RULE_TESTS = os.path.join(REPO, "docs", "prometheus", "agw-rules.test.yml")
# What Grafana puts in for its variables when it runs a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", '"$consumer"': '".*"'}


def dashboard_queries() -> list[tuple[str, str]]:
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [(panel["title"], grafana_expands(target["expr"])) for panel in dashboard["panels"] for target in panel["targets"]]


def grafana_expands(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (Debian's prometheus package; .ci/run installs it)")
    return path


class RulesFileTests(SynchronousTestCase):
    def test_promtool_accepts_the_rules(self) -> None:
        result = subprocess.run([tool("promtool"), "check", "rules", RULES], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 5 rules found", result.stdout)

    def test_promtool_rule_unit_tests_pass(self) -> None:
        """Alerts the live run below does not provoke (the ledger going down) are checked by Prometheus' own rule tests."""
        result = subprocess.run(
            [tool("promtool"), "test", "rules", os.path.basename(RULE_TESTS)], capture_output=True, text=True,
            cwd=os.path.dirname(RULE_TESTS),
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)

    def test_the_dashboard_has_the_panels_operators_asked_for(self) -> None:
        titles = [title for title, _ in dashboard_queries()]
        for wanted in ("Tokens/s", "Cost per day", "Open Realtime sessions", "Time to first token", "messages/s",
                       "Refusals", "close codes", "Budget remaining"):
            self.assertTrue(any(wanted in title for title in titles), wanted)


class Prometheus:
    """A real Prometheus in a temp dir, scraping C{target} every second and evaluating the rules."""

    def __init__(self, case: TestCase, target: str) -> None:
        binary = tool("prometheus")
        directory = tempfile.mkdtemp(prefix="agw-prometheus-")
        case.addCleanup(shutil.rmtree, directory, True)
        shutil.copy(RULES, os.path.join(directory, "rules.yml"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "agw", "static_configs": [{"targets": [target]}]}],
        }
        with open(os.path.join(directory, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        self.port = free_port()
        self.log = open(os.path.join(directory, "prometheus.log"), "wb")
        case.addCleanup(self.log.close)
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory}/prometheus.yml", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=directory,
        )
        case.addCleanup(self.stop)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    @inlineCallbacks
    def api(self, path: str, **params: str) -> Any:
        response = yield treq.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, persistent=False)
        body = yield response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    @inlineCallbacks
    def query(self, expr: str) -> Any:
        """The instant vector C{expr} gives now (a list of series)."""
        data = yield self.api("query", query=expr)
        return data["result"]

    def returns_data(self, expr: str) -> Any:
        d = self.query(expr)
        d.addCallbacks(bool, lambda _: False)
        return d


class DashboardTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def traffic(self, agw: TwistdAgw, fake: FakeOpenAI) -> Any:
        """A Realtime session, a bad key, a provider refusal, a completion and a provider error."""
        base = f"ws://127.0.0.1:{agw.port}/v1"
        done = yield deferToThread(run_session, base, 2)
        self.assertEqual(len(done), 2)
        url = f"{base}/realtime?model=gpt-realtime"
        status, _ = yield deferToThread(handshake_status, url, additional_headers={"Authorization": "Bearer wrong"})
        self.assertEqual(status, 401)
        fake.refuse(503, b'{"error": {"message": "overloaded", "code": "server_error"}}')
        status, _ = yield deferToThread(handshake_status, url)
        self.assertEqual(status, 503)
        completion = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        for fail in (False, True):
            if fail:
                fake.fail_http(500)
            response = yield treq.post(f"http://127.0.0.1:{agw.port}/v1/chat/completions", json=completion, headers=headers, persistent=False)
            yield response.content()
            self.assertEqual(response.code, 500 if fail else 200)

    @inlineCallbacks
    def test_every_dashboard_query_returns_data_and_every_alert_fires(self) -> Any:
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        database = f"sqlite://{self.mktemp()}.db"

        def governed(config: dict) -> None:
            config["config"]["database"] = {"url": database}
            for route in config["binds"][0]["listeners"][0]["routes"]:
                route["policies"]["apiKey"] = {"mode": "strict", "keys": [{
                    "key": CLIENT_KEY, "metadata": {"name": "team-a"}, "budgets": [{
                        "name": "daily", "limit": {"unit": "Tokens", "amount": 50}, "window": {"rolling": "24h"},
                        "onBudgetExceeded": "Audit",
                    }],
                }]}

        agw = yield TwistdAgw.start(self, upstream.getHost().port, "--workers", "2", edit=governed)
        prometheus = Prometheus(self, f"127.0.0.1:{agw.stats}")
        yield self.poll(prometheus, 'up{job="agw"} == 1', "Prometheus never scraped agw")

        # Two rounds, a scrape apart, so that rates and increases have two samples.
        yield self.traffic(agw, fake)
        yield self.poll(prometheus, "agw_realtime_closes_total", "the first round never reached Prometheus")
        pids = {int(line.split()[-1].rstrip(")")) for line in agw.log_text().splitlines() if "started (pid" in line}
        os.kill(sorted(pids)[0], 9)
        yield self.poll(prometheus, "agw_worker_restarts_total > 0", "the restart was never scraped")
        yield self.poll(prometheus, "agw_workers_ready == 2", "the worker never came back")
        yield self.traffic(agw, fake)

        for title, expr in dashboard_queries():
            yield self.poll(prometheus, expr, f"panel {title!r} has no data: {expr}")
        with open(RULES) as f:
            alerts = [rule["alert"] for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]
        # Covered by promtool's rule tests instead (this run's ledger never goes down); still loaded and healthy.
        unprovoked = {"AgwBudgetLedgerDown"}

        @inlineCallbacks
        def states() -> Any:
            data = yield prometheus.api("rules")
            rules = [rule for group in data["groups"] for rule in group["rules"]]
            self.assertEqual([r["health"] for r in rules], ["ok"] * len(alerts), rules)
            return {r["name"]: r["state"] for r in rules}

        self.firing: dict[str, str] = {}

        @inlineCallbacks
        def all_active() -> Any:
            self.firing = yield states()
            return all(state in ("pending", "firing") for name, state in self.firing.items() if name not in unprovoked)

        yield self.poll_deferred(all_active, lambda: f"alerts not active: {self.firing}")
        self.assertEqual(sorted(self.firing), sorted(alerts))
        self.assertEqual({name: self.firing[name] for name in unprovoked}, {name: "inactive" for name in unprovoked})
        self.assertEqual((yield agw.stop()), 0)  # its keep-alive connections to the fake close with it

    def poll(self, prometheus: Prometheus, expr: str, message: str) -> Any:
        return self.poll_deferred(lambda: prometheus.returns_data(expr), lambda: message)

    @inlineCallbacks
    def poll_deferred(self, check: Any, message: Any, timeout: float = 90.0) -> Any:
        """Call C{check} (a Deferred-returning predicate) until it is true, or fail after C{timeout} seconds."""
        deadline = reactor.seconds() + timeout
        while not (yield check()):
            if reactor.seconds() > deadline:
                self.fail(message())
            yield deferLater(reactor, 0.2)
