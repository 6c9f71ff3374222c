"""
The money soak: does every token the provider bills land in the budget
ledger, exactly once, and does no budget run over by more than the bound
docs/governance.md states — under bursts, server VAD, several workers and
database restarts?

`twistd agw --workers 2` shares one real PostgreSQL (started here on
loopback); Realtime sessions of three consumers run for the whole time:
two send bursts of out-of-band `response.create` (one against a Tokens
budget, one against a USD budget, audio), one speaks to server VAD (each
`input_audio_buffer.commit` starts a response nobody asked for). The
database is stopped and started again twice mid-run. At the end the
ledger's rows are compared with the provider's own usage objects (what the
clients received in `response.done`, checked against the fake provider's
ledger) priced by hand from the catalog, and each budget's overrun with
the largest single response of its consumer.

    python bench/money_soak.py [--seconds 60] [--sessions 2] [--json PATH] [--log-dir DIR]

Prints one line of figures; exits 1 if the ledger is not exact or a budget
ran over the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import free_port, machine, result_path, start_agw_with  # noqa: E402
from soak_common import PICO, budget_keys, expected_spend, price, spent_by_consumer, wait_charges_written  # noqa: E402

from agw.testing import FakeOpenAI, PostgresServer  # noqa: E402

WORKERS = 2
CONSUMERS = {
    # name: (key, budget unit, limit, what its sessions do)
    "burst-tokens": ("sk-soak-burst-tokens", "Tokens", Decimal(20_000), "burst"),
    "burst-usd": ("sk-soak-burst-usd", "USD", Decimal("0.40"), "burst-audio"),
    "vad": ("sk-soak-vad", "Tokens", Decimal(15_000), "vad"),
}
def kind_of(consumer: str) -> str:
    return CONSUMERS[consumer][3]


def bound(kind: str, sessions: int) -> int:
    """
    docs/governance.md's bound on a Block budget's overrun, in responses of
    its consumer: one per process, plus, for server VAD, the one response
    each open session's provider starts before its cancel lands.
    """
    return WORKERS + (sessions if kind == "vad" else 0)


def config(fake_port: int, database: str) -> dict[str, Any]:
    keys = budget_keys({name: (key, unit, limit) for name, (key, unit, limit, _) in CONSUMERS.items()})
    return {
        "config": {"database": {"url": database}, "statsAddr": f"127.0.0.1:{free_port()}"},
        "binds": [{"port": free_port(), "listeners": [{"routes": [{
            "matches": [{"path": {"pathPrefix": "/v1/realtime"}}],
            "backends": [{"ai": {"name": "openai", "provider": {"openAI": {}}, "hostOverride": f"127.0.0.1:{fake_port}"}}],
            "policies": {
                "ai": {"routes": {"/v1/realtime": "realtime"}}, "backendAuth": {"key": "$OPENAI_API_KEY"},
                "apiKey": {"mode": "strict", "keys": keys},
            },
        }]}]}],
    }


class Tally:
    """What the clients saw, per consumer (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.usages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.sessions: dict[str, str] = {}  # the provider's session id -> consumer
        self.refused = 0
        self.handshakes_refused = 0

    def opened(self, consumer: str, session_id: str) -> None:
        with self.lock:
            self.sessions[session_id] = consumer

    def done(self, consumer: str, usage: dict[str, Any]) -> None:
        with self.lock:
            self.usages[consumer].append(usage)

    def count(self, refused: int = 0, handshakes: int = 0) -> None:
        with self.lock:
            self.refused += refused
            self.handshakes_refused += handshakes


def session_loop(url: str, consumer: str, tally: Tally, until: float, tag: str) -> None:
    """One client: sessions one after another until C{until}, doing what its consumer does."""
    key, _, _, kind = CONSUMERS[consumer]
    n = 0
    while time.monotonic() < until:
        try:
            ws = connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10)
        except InvalidStatus:
            tally.count(handshakes=1)
            time.sleep(0.2)  # spent: refused at the handshake
            continue
        try:
            with ws:
                tally.opened(consumer, json.loads(ws.recv(timeout=10))["session"]["id"])
                while time.monotonic() < until:
                    n += 1
                    if kind == "vad":
                        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the server starts a response
                        expected = 1
                    else:
                        expected = 6
                        response: dict[str, Any] = {"conversation": "none"}
                        if kind == "burst-audio":
                            response["output_modalities"] = ["audio"]
                        for i in range(expected):
                            ws.send(json.dumps({"type": "response.create", "event_id": f"{tag}-{n}-{i}", "response": response}))
                    answered = 0
                    while answered < expected:
                        event = json.loads(ws.recv(timeout=30))
                        if event["type"] == "response.done":
                            tally.done(consumer, event["response"]["usage"])
                            answered += 1
                        elif event["type"] == "error" and str(event["error"].get("event_id") or "").startswith(tag):
                            tally.count(refused=1)
                            answered += 1
                    time.sleep(0.02)
        except (ConnectionClosed, TimeoutError, OSError):
            continue  # a worker closed it (or it stalled): a new session


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    fake = FakeOpenAI()
    fake.server_vad = True
    fake.response_delay = 0.05  # the responses of a burst overlap at the provider
    listening: list[Any] = []
    reactor.callWhenRunning(lambda: fake.listen(reactor).addCallback(listening.append))
    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
    while not listening:
        time.sleep(0.01)
    fake_port = listening[0].getHost().port
    database = PostgresServer()
    data = config(fake_port, database.url)
    stats_port = int(data["config"]["statsAddr"].rsplit(":", 1)[1])
    logging: list[str] = []
    if args.log_dir:  # agw's own log (through AGW_BENCH_LOG) and its access log, to see what happened
        os.makedirs(args.log_dir, exist_ok=True)
        os.environ["AGW_BENCH_LOG"] = os.path.join(args.log_dir, "agw.log")
        logging = ["--access-log", "json", "--access-log-file", os.path.join(args.log_dir, "access.log")]
    agw, port = start_agw_with(data, "--workers", str(WORKERS), *logging)
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    tally = Tally()
    started = time.monotonic()
    until = started + args.seconds
    threads = [
        threading.Thread(target=session_loop, args=(url, consumer, tally, until, f"{consumer}-{s}"), daemon=True)
        for consumer in CONSUMERS for s in range(args.sessions)
    ]
    try:
        for thread in threads:
            thread.start()
        restarts = 0
        for at in (args.seconds / 3, 2 * args.seconds / 3):
            time.sleep(max(0.0, started + at - time.monotonic()))
            database.stop()  # clients are disconnected, as in a real restart
            time.sleep(3)
            database.start()
            restarts += 1
        for thread in threads:
            thread.join(args.seconds + 60)
        wait_charges_written(stats_port)
        ledger = spent_by_consumer(database.url, database)
    finally:
        agw.terminate()
        agw.wait()
        database.remove()
        reactor.callFromThread(reactor.stop)
    # The provider's usage objects, by consumer (its ledger names each response's session).
    billed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in fake.ledger:
        billed[tally.sessions.get(entry.session or "", "?")].append(entry.usage)
    provider_tokens = sum(entry.usage["input_tokens"] + entry.usage["output_tokens"] for entry in fake.ledger)
    seen_tokens = sum(u["input_tokens"] + u["output_tokens"] for usages in tally.usages.values() for u in usages)
    report: dict[str, Any] = {"consumers": {}}
    exact = "?" not in billed
    within = True
    for consumer, (_, unit, limit, _) in CONSUMERS.items():
        usages = billed[consumer]
        expected = expected_spend(unit, usages)
        if unit == "USD":
            per_response = [price(u) * PICO for u in usages]
            limit_units = limit * PICO
        else:
            per_response = [Decimal(u["input_tokens"] + u["output_tokens"]) for u in usages]
            limit_units = limit
        spent = int(ledger.get(consumer, 0))
        largest = max(per_response, default=Decimal(1))
        overrun = max(Decimal(0), spent - limit_units) / largest
        exact = exact and spent == expected
        within = within and overrun <= bound(kind_of(consumer), args.sessions)
        report["consumers"][consumer] = {
            "unit": unit, "limit": str(limit), "responses": len(usages), "client_saw_done": len(tally.usages[consumer]),
            "ledger": spent, "provider_x_catalog": expected, "exact": spent == expected,
            "overrun_responses": float(round(overrun, 2)), "bound_responses": bound(kind_of(consumer), args.sessions),
        }
    report.update({
        "machine": machine(), "workers": WORKERS, "sessions": len(threads), "seconds": args.seconds,
        "database_restarts": restarts, "responses_billed": len(fake.ledger), "refused_in_protocol": tally.refused,
        "handshakes_refused": tally.handshakes_refused, "provider_tokens": provider_tokens, "client_seen_tokens": seen_tokens,
        "exact": exact, "within_bound": within,
    })
    overruns = ", ".join(f"{c} {r['overrun_responses']:.2f}" for c, r in report["consumers"].items())
    print(
        f"money soak: {WORKERS} workers, {len(threads)} sessions, {args.seconds:.0f} s, PostgreSQL restarted {restarts}x; "
        f"{len(fake.ledger)} responses billed, {tally.refused} refused in-protocol, {tally.handshakes_refused} handshakes refused; "
        f"ledger {'==' if exact else '!='} provider usage x catalog for "
        f"{sum(r['exact'] for r in report['consumers'].values())}/{len(CONSUMERS)} budgets; "
        f"overrun in responses: {overruns} (bound: one per worker, plus one per server-VAD session)"
    )
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    return 0 if exact and within else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sessions", type=int, default=2, help="sessions per consumer")
    parser.add_argument("--json", default=result_path("money_soak.json"))
    parser.add_argument("--log-dir", help="keep agw's log and access log (JSON) here")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
