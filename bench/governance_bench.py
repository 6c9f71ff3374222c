"""
The cost of governance on the Realtime hot path: the same load through agw
without policies and through agw with client keys (strict), a USD and a
Tokens budget (SQLite), and request and token rate limits, in one run with
interleaved rounds:

- messages/s with 8 sessions x 16 in flight (small events);
- input_audio_buffer.append MB/s with 48 KB chunks;
- responses/s: response.create -> response.done round trips (each one is
  checked against the budgets and limits, priced and charged).

    python bench/governance_bench.py [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import yaml
from twisted.internet import defer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, free_port, machine, result_path, run_on_reactor, start_agw_with, start_fake  # noqa: E402
from realtime_bench import audio_rate, connect, message_rate, round_trips  # noqa: E402

CREATE = json.dumps({"type": "response.create", "response": {"output_modalities": ["audio"]}}).encode()


def config(upstream_port: int, governed: bool, database: str) -> dict[str, Any]:
    with open(os.path.join(REPO, "config.yaml")) as f:
        data = yaml.safe_load(f)
    data["binds"][0]["port"] = free_port()
    for route in data["binds"][0]["listeners"][0]["routes"]:
        route["backends"][0]["ai"]["hostOverride"] = f"127.0.0.1:{upstream_port}"
        if governed:
            route["policies"]["apiKey"] = {"mode": "strict", "keys": [{"key": "sk-client", "metadata": {"name": "bench"}, "budgets": [
                {"name": "usd", "limit": {"unit": "USD", "amount": 10**6}, "window": {"rolling": "24h"}},
                {"name": "tokens", "limit": {"unit": "Tokens", "amount": 10**12}, "window": {"rolling": "1h"}},
            ]}]}
            route["policies"]["localRateLimit"] = [
                {"maxTokens": 10**9, "tokensPerFill": 10**9, "fillInterval": "1s", "type": "requests"},
                {"maxTokens": 10**12, "tokensPerFill": 10**12, "fillInterval": "1s", "type": "tokens"},
            ]
    if governed:
        data["config"] = {"database": {"url": f"sqlite://{database}"}, "adminAddr": f"127.0.0.1:{free_port()}"}
    return data


@defer.inlineCallbacks
def response_rate(port: int, sessions: int = 8, seconds: float = 5.0) -> Any:
    clients = yield defer.gatherResults([connect(port) for _ in range(sessions)])
    done = {"n": 0}
    deadline = time.perf_counter() + seconds

    @defer.inlineCallbacks
    def pump(client: Any) -> Any:
        while time.perf_counter() < deadline:
            finished: defer.Deferred[bytes] = defer.Deferred()
            client.on_done = finished
            client.sendMessage(CREATE)
            yield finished
            done["n"] += 1

    start = time.perf_counter()
    yield defer.gatherResults([pump(c) for c in clients])
    elapsed = time.perf_counter() - start
    for c in clients:
        c.sendClose()
    return {"responses_per_s": done["n"] / elapsed}


def install_done_hook() -> None:
    """The bench client fires C{on_done} at each response.done (realtime_bench's client knows only echoes)."""
    from realtime_bench import Client

    original = Client.onMessage

    def on_message(self: Any, payload: bytes, is_binary: bool) -> None:
        if b'"response.done"' in payload[:40] and getattr(self, "on_done", None) is not None:
            finished, self.on_done = self.on_done, None
            finished.callback(payload)
        original(self, payload, is_binary)

    Client.onMessage = on_message


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    install_done_hook()
    fake, fake_port = start_fake()
    database = os.path.join(tempfile.mkdtemp(prefix="agw-bench-"), "budgets.db")
    plain, plain_port = start_agw_with(config(fake_port, False, database))
    governed, governed_port = start_agw_with(config(fake_port, True, database))
    rounds: dict[str, list[dict[str, float]]] = {"plain": [], "governed": []}
    try:
        for port in (plain_port, governed_port):
            yield round_trips(port, 200)  # warm up
        for _ in range(args.rounds):
            for name, port in (("plain", plain_port), ("governed", governed_port)):
                rate = yield message_rate(port)
                audio = yield audio_rate(port)
                responses = yield response_rate(port)
                rounds[name].append({
                    "messages_per_s": rate["messages_per_s"], "audio_mb_per_s": audio["mb_per_s"],
                    "responses_per_s": responses["responses_per_s"],
                })
    finally:
        for process in (plain, governed, fake):
            process.terminate()
            process.wait()
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
    ratios = {k: medians["governed"][k] / medians["plain"][k] for k in medians["plain"]}
    print(f"{'':24}{'plain':>14}{'governed':>14}{'ratio':>8}")
    for key, label in (("messages_per_s", "messages/s (8 x 16)"), ("audio_mb_per_s", "audio MB/s (48 KB)"),
                       ("responses_per_s", "responses/s (8 sessions)")):
        print(f"{label:24}{medians['plain'][key]:>14.1f}{medians['governed'][key]:>14.1f}{ratios[key]:>8.2f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "medians": medians, "ratios": ratios, "rounds": rounds}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=result_path("governance.json"))
    run_on_reactor(lambda: run(parser.parse_args()))


if __name__ == "__main__":
    main()
