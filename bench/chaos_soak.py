"""
The chaos soak: is every token still metered, every budget charged exactly,
every session closed and every file descriptor given back, when a pool of
workers serves hundreds of Realtime sessions and HTTP requests for minutes
while everything around it goes wrong?

`twistd agw --workers 2` runs the repo's config.yaml pointed at the fake
provider (bench/serve_fake.py, its own process), with client keys whose
budgets share one ledger (PostgreSQL; SQLite if it is not installed): one
consumer with a Tokens budget (HTTP and half the sessions), one with a USD
budget. bench/chaos_load.py drives the sessions (talk, cancel, leave
mid-response, vanish or drop TCP without a close, read slowly through a
small window) and the requests (some read slowly, some abandoned mid-body);
bench/chaos_provider.py reloads the config (file rewritten, SIGHUP in turn),
kills the provider and starts it again, has it close every session with
1011, and stalls it. A warm-up of the same load without faults comes first:
the figures "before" are taken after it (first-use allocations are not
leaks).

At the end: tokens on the pool's /metrics (every worker) == the provider's
bill (its ledger file, over all its processes) per operation, model and
token type; each budget's ledger spend == that consumer's bill (tokens, or
USD priced by hand from the catalog); no session open in agw nor at the
provider; every reload applied, no worker restarted; file descriptors and
RSS of the parent and workers back near the warm figures.

    python bench/chaos_soak.py [--seconds 180] [--sessions 200] [--http-rate 40] [--json PATH]

Prints one line of figures; exits 1 if anything was lost or leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chaos_load import HTTP_MODES, SCENARIOS, Load, Tally  # noqa: E402
from chaos_provider import Chaos, FakeProvider  # noqa: E402
from common import free_port, machine, repo_config, result_path, run_on_reactor, start_agw_with  # noqa: E402
from soak_common import budget_keys, expected_spend, footprint, metric_sums, metrics_text, spent_by_consumer, wait_charges_written  # noqa: E402

from agw.testing import PostgresServer, PostgresUnavailable  # noqa: E402
from agw.testing._state import FakeState  # noqa: E402
from tests.support import samples, token_sums  # noqa: E402

WORKERS = 2
CONSUMERS = {  # name: (key, budget unit, limit): limits no soak reaches, so that nothing is refused
    "soak-tokens": ("sk-soak-tokens", "Tokens", Decimal(10**12)),
    "soak-usd": ("sk-soak-usd", "USD", Decimal(10**6)),
}
FD_SLACK = 8  # per process: a few sockets agw may hold open by design (the ledger's pool, a log)
RSS_SLACK_KIB = 16 * 1024  # per process


def gateway_config(fake_port: int, database: str) -> dict[str, Any]:
    """The repo's config.yaml on the fake, with budgeted client keys on every route and the shared ledger."""
    data = repo_config(fake_port)
    data["config"] = {"database": {"url": database}, "statsAddr": f"127.0.0.1:{free_port()}"}
    for route in data["binds"][0]["listeners"][0]["routes"]:
        route["policies"]["apiKey"] = {"mode": "strict", "keys": budget_keys(CONSUMERS)}
    return data


def open_database(directory: str) -> tuple[str, PostgresServer | None]:
    """PostgreSQL on loopback; a SQLite file where PostgreSQL is not installed."""
    try:
        server = PostgresServer()
        return server.url, server
    except PostgresUnavailable:
        return "sqlite://" + os.path.join(directory, "budgets.db"), None


def fake_open_sessions(fake: FakeProvider) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{fake.admin}/stats", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.loads(response.read())["open"])


def billed_totals(fake: FakeProvider) -> dict[tuple[str, str, str], int]:
    """The provider's bill by (operation, model, token type), as agw's token metric names them."""
    state = FakeState()
    state.ledger = fake.billed()
    return state.billed()


class Soak:
    """One run: the processes, what the clients and the faults did, the figures before."""

    def __init__(self, args: argparse.Namespace, directory: str, database: str, postgres: PostgresServer | None) -> None:
        from twisted.internet import reactor

        self.args, self.directory, self.database, self.postgres, self.reactor = args, directory, database, postgres, reactor
        self.fake = FakeProvider(reactor, directory, args.response_delay)
        self.tally = Tally()
        self.agw: Any = None
        self.chaos: Chaos | None = None
        self.figures: dict[str, Any] = {}

    async def drive(self) -> None:
        reactor, args = self.reactor, self.args
        await self.fake.start()
        data = gateway_config(self.fake.port, self.database)
        self.stats = int(data["config"]["statsAddr"].rsplit(":", 1)[1])
        config_path = os.path.join(self.directory, "config.yaml")
        logging = []
        if args.log_dir:  # agw's own log (through AGW_BENCH_LOG) and its access log
            os.makedirs(args.log_dir, exist_ok=True)
            os.environ["AGW_BENCH_LOG"] = os.path.join(args.log_dir, "agw.log")
            logging = ["--access-log", "json", "--access-log-file", os.path.join(args.log_dir, "access.log")]
        self.agw, port = start_agw_with(data, "--workers", str(WORKERS), *logging, config_path=config_path)
        await self.settled(lambda: metric_sums(self.stats).get("agw_workers_ready") == WORKERS)  # ready is a quorum: wait for all
        self.figures["idle"] = footprint(self.agw.pid)
        keys = [(name, key) for name, (key, _, _) in CONSUMERS.items()]
        scenarios = {args.only: 1} if args.only else SCENARIOS
        http_modes = {**HTTP_MODES, "leave": args.http_leave_early}
        load = Load(reactor, port, args.sessions, args.http_rate, keys, self.tally, args.seed, scenarios, http_modes)
        await load.run(reactor.seconds() + args.warmup)  # the same load, no faults
        self.figures["warm settled"] = await self.settled()
        self.figures["before"] = footprint(self.agw.pid)
        self.figures["warm-up counts"] = dict(self.tally.counts)  # the line reports the run's own
        self.figures["started"] = time.monotonic()
        self.chaos = Chaos(reactor, self.fake, self.agw.pid, config_path, {
            "reload": args.reload_every, "kill": args.kill_every, "close": args.close_every, "stall": args.stall_every,
        })
        self.chaos.start()
        sampling = LoopingCall(lambda: self.figures["during"].append(footprint(self.agw.pid)["rss_kib"]))
        sampling.clock = reactor
        self.figures["during"] = []
        # RSS along the run: a leak grows, a peak does not.
        sampling.start(max(1.0, args.seconds / 10), now=False).addErrback(self.tally.failed, "sampling")
        load = Load(reactor, port, args.sessions, args.http_rate, keys, self.tally, args.seed + 1, scenarios, http_modes)
        await load.run(reactor.seconds() + args.seconds)
        await self.chaos.stop()
        if sampling.running:
            sampling.stop()
        self.figures["load_seconds"] = time.monotonic() - self.figures["started"]
        self.figures["settled"] = await self.settled()  # drains (cancel_grace) and charges end

    async def settled(self, condition: Callable[[], bool] | None = None, timeout: float = 60.0) -> bool:
        """
        Poll until C{condition} (blocking, run in a thread) holds; by default,
        until no session is open in agw nor at the provider and agw has
        metered the whole bill. C{False} at the deadline.
        """
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            try:
                if await deferToThread(condition or self.quiet):
                    return True
            except OSError:  # a scrape that timed out on a busy machine: ask again
                pass
            await deferLater(self.reactor, 0.2, lambda: None)
        return False

    def quiet(self) -> bool:
        state = self.state()
        return not state["agw sessions"] and not state["provider sessions"] and state["metered"] == state["billed"]

    def state(self) -> dict[str, Any]:
        """What agw and the provider hold now (blocking)."""
        found = samples(metrics_text(self.stats))
        metered = {key: int(value) for key, value in token_sums(found).items() if value}
        billed = {key: value for key, value in billed_totals(self.fake).items() if value}
        sessions = sum(value for (name, _), value in found.items() if name == "agw_realtime_sessions")
        return {"agw sessions": sessions, "provider sessions": fake_open_sessions(self.fake), "metered": metered, "billed": billed}


def verdict(soak: Soak) -> tuple[bool, str, dict[str, Any]]:
    """The end's checks (blocking, after the load): exact, and the line that says so."""
    charges_written = wait_charges_written(soak.stats)
    state, sums = soak.state(), metric_sums(soak.stats)
    after = footprint(soak.agw.pid)
    before = soak.figures["before"]
    chaos = soak.chaos
    assert chaos is not None
    by_consumer: dict[str, list[dict[str, Any]]] = {name: [] for name in CONSUMERS}
    unknown = 0
    for entry in soak.fake.billed():
        consumer = "soak-tokens" if entry.session is None else soak.tally.sessions.get(entry.session)
        if consumer is None:
            unknown += 1
        else:
            by_consumer[consumer].append(entry.usage)
    spent = spent_by_consumer(soak.database, soak.postgres)
    budgets = {
        name: {"spent": spent.get(name, 0), "expected": expected_spend(unit, by_consumer[name])} for name, (_, unit, _) in CONSUMERS.items()
    }
    tokens = sum(state["billed"].values())
    responses = sum(len(usages) for usages in by_consumer.values()) + unknown
    checks = {
        "tokens metered == billed": state["metered"] == state["billed"],
        "budgets == bill x price": charges_written and not unknown and all(b["spent"] == b["expected"] for b in budgets.values()),
        "no session open": not state["agw sessions"] and not state["provider sessions"] and not soak.tally.counts["sessions stuck"],
        "reloads applied": sums.get("agw_config_reloads_total", 0) == chaos.counts["reload"] and not reload_failures(soak),
        "no worker restarted": not sums.get("agw_worker_restarts_total", 0),
        "faults ran": not chaos.failures and all(chaos.counts[k] for k in ("reload", "kill", "close", "stall")),
        "load ran": not soak.tally.errors,
        "fds back": after["fds"] <= before["fds"] + FD_SLACK * after["processes"] and after["processes"] == before["processes"],
        "RSS back": after["rss_kib"] <= before["rss_kib"] + RSS_SLACK_KIB * (3 if soak.args.glibc_defaults else 1) * after["processes"],
    }
    counts = soak.tally.counts - Counter(soak.figures["warm-up counts"])
    spend_figures = " ".join(f"{name} {b['spent']:,}/{b['expected']:,}" for name, b in budgets.items())
    http = sum(n for k, n in counts.items() if k.startswith("http ") and k[5:].isdigit())
    line = (
        f"chaos soak: {WORKERS} workers, {soak.figures['load_seconds']:.0f} s, {soak.args.sessions} concurrent sessions "
        f"({counts['sessions']} opened, {counts['handshakes failed']} handshakes failed), {http} HTTP answers "
        f"({counts['http 200']} 200, {http - counts['http 200']} other, {counts['http abandoned mid-body']} abandoned); "
        f"{chaos.counts['reload']} reloads, provider killed {chaos.counts['kill']}x, 1011 {chaos.counts['close']}x "
        f"({chaos.counts['close 1011 sessions']} sessions), stalled {chaos.counts['stall']}x; "
        f"{responses:,} responses billed, tokens metered {sum(state['metered'].values()):,} {'==' if checks['tokens metered == billed'] else '!='} billed {tokens:,}; "
        f"budgets {spend_figures}; "
        f"open sessions agw {state['agw sessions']:.0f} provider {state['provider sessions']}; "
        f"fds {before['fds']} -> {after['fds']}, RSS {before['rss_kib'] / 1024:.0f} -> {after['rss_kib'] / 1024:.0f} MiB "
        f"(idle at start {soak.figures['idle']['rss_kib'] / 1024:.0f}); "
        + ("OK" if all(checks.values()) else "FAILED: " + ", ".join(k for k, ok in checks.items() if not ok))
    )
    report = {
        "machine": machine(), "args": vars(soak.args), "checks": checks, "clients": dict(counts), "warm-up clients": soak.figures["warm-up counts"],
        "faults": dict(chaos.counts),
        "fault_failures": chaos.failures, "load_errors": soak.tally.errors, "metered": {"/".join(k): v for k, v in state["metered"].items()},
        "billed": {"/".join(k): v for k, v in state["billed"].items()}, "budgets": budgets, "unattributed_bills": unknown,
        "footprint": {"idle": soak.figures["idle"], "before": before, "after": after, "rss_kib_during": soak.figures["during"]},
        "line": line,
    }
    return all(checks.values()), line, report


def reload_failures(soak: Soak) -> float:
    return samples(metrics_text(soak.stats)).get(("agw_config_reloads_total", frozenset({("result", "failure")})), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the faults and the load run")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent Realtime sessions")
    parser.add_argument("--http-rate", type=float, default=40.0, help="HTTP requests per second")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--reload-every", type=float, default=5.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--close-every", type=float, default=11.0)
    parser.add_argument("--stall-every", type=float, default=13.0)
    parser.add_argument("--response-delay", type=float, default=0.3, help="the provider's time from first delta to response.done")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--glibc-defaults", action="store_true", help="leave agw's malloc as it is (RSS keeps the peak)")
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="every session plays this scenario")
    parser.add_argument(
        "--http-leave-early", type=int, default=0,
        help="weight (of 100) of HTTP clients gone before the answer: agw cancels those upstream, and loses what was billed",
    )
    parser.add_argument("--json", default=result_path("chaos_soak.json"))
    parser.add_argument("--log-dir", help="keep agw's log and access log (JSON) here")
    args = parser.parse_args()
    if not args.glibc_defaults:
        # agw's processes give freed large buffers back to the system at once: RSS then shows live
        # memory, so that a leak is seen (glibc's defaults keep the peak's free lists: +30 MiB a worker).
        os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    directory = tempfile.mkdtemp(prefix="agw-chaos-")
    database, postgres = open_database(directory)
    soak = Soak(args, directory, database, postgres)
    try:
        run_on_reactor(lambda: Deferred.fromCoroutine(soak.drive()))
        ok, line, report = verdict(soak)
    finally:
        if soak.agw is not None:
            soak.agw.terminate()
            soak.agw.wait()
        soak.fake.stop()
        if postgres is not None:
            postgres.remove()
        shutil.rmtree(directory, ignore_errors=True)
    print(line, flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
