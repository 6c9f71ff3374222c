"""
What Realtime guards cost, in one run: agw without guards vs agw with the
worked example's guards (regex mask of cards, e-mails and SSNs on client
events, a forbidden-topic reject, and a streaming response guard), both
twistd processes in front of the same fake, interleaved rounds:

- typed-text messages/s: conversation.item.create round trips (the event
  the request guards read, and the provider's conversation.item.created)
  with 8 sessions x 16 in flight;
- audio MB/s: input_audio_buffer.append (48 KB) on one session: never
  parsed, guards or not;
- time to first text delta of a 40-word answer (p50 over 300 responses,
  one at a time), and to its last: the window (holdChars, 64) holds the
  newest text back.

    python bench/guard_bench.py [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Any

from twisted.internet import defer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, repo_config, result_path, run_on_reactor, start_agw_with, start_fake  # noqa: E402
from realtime_bench import Client, audio_rate, connect, message_rate  # noqa: E402

GUARDS = {
    "streaming": "Enabled",
    "request": [
        {"regex": {"action": "mask", "rules": [{"builtin": "creditCard"}, {"builtin": "email"}, {"builtin": "ssn"}]}},
        {"regex": {"action": "reject", "rules": [{"pattern": "(?i)\\b(crypto|bitcoin) refund\\b"}]}},
    ],
    "response": [{"regex": {"action": "mask", "rules": [{"builtin": "creditCard"}]}}],
}
ITEM = json.dumps({"type": "conversation.item.create", "item": {
    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "My order 4412 arrived damaged, please call me back tomorrow."}],
}}).encode()
RESPONSE = json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}).encode()


class GuardClient(Client):
    """Waits for conversation.item.created, first deltas and response.done as well as echoes."""

    def onOpen(self) -> None:
        self.items: list[defer.Deferred[None]] = []
        self.first: defer.Deferred[float] | None = None
        self.done: defer.Deferred[float] | None = None
        super().onOpen()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        head = payload[:60]
        if b"conversation.item.created" in head and self.items:
            self.items.pop(0).callback(None)
        elif b"output_text.delta" in head and self.first is not None:
            first, self.first = self.first, None
            first.callback(time.perf_counter())
        elif b"response.done" in head and self.done is not None:
            done, self.done = self.done, None
            done.callback(time.perf_counter())
        else:
            super().onMessage(payload, isBinary)

    def item(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.items.append(d)
        self.sendMessage(ITEM)
        return d


def config(upstream_port: int, guarded: bool) -> dict[str, Any]:
    """The repo's config.yaml in front of the fake; with the guards on every route if C{guarded}."""
    data = repo_config(upstream_port)
    for route in data["binds"][0]["listeners"][0]["routes"]:
        if guarded:
            route["policies"]["ai"]["promptGuard"] = copy.deepcopy(GUARDS)
    return data


@defer.inlineCallbacks
def first_delta(port: int, count: int = 300) -> Any:
    client = yield connect(port, GuardClient)
    firsts, lasts = [], []
    for _ in range(count):
        client.first, client.done = defer.Deferred(), defer.Deferred()
        start = time.perf_counter()
        client.sendMessage(RESPONSE)
        first = yield client.first
        last = yield client.done
        firsts.append((first - start) * 1e6)
        lasts.append((last - start) * 1e6)
    client.sendClose()
    return {"first_delta_p50_us": statistics.median(firsts), "done_p50_us": statistics.median(lasts)}


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    fake, fake_port = start_fake(reply_words=40)
    servers = {name: start_agw_with(config(fake_port, name == "guarded")) for name in ("unguarded", "guarded")}
    rounds: dict[str, list[Any]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (_, port) in servers.items():
                items = yield message_rate(port, protocol=GuardClient, round_trip=GuardClient.item)
                audio = yield audio_rate(port)
                delta = yield first_delta(port)
                rounds[name].append({"messages_per_s": items["messages_per_s"], "audio_mb_per_s": audio["mb_per_s"], **delta})
    finally:
        for process in [fake, *(p for p, _ in servers.values())]:
            process.terminate()
            process.wait()
    figures = ("messages_per_s", "audio_mb_per_s", "first_delta_p50_us", "done_p50_us")
    results = {name: {f: statistics.median(r[f] for r in runs) for f in figures} for name, runs in rounds.items()}
    off, on = results["unguarded"], results["guarded"]
    summary = {
        "messages_ratio": on["messages_per_s"] / off["messages_per_s"],
        "audio_ratio": on["audio_mb_per_s"] / off["audio_mb_per_s"],
        "added_first_delta_us": on["first_delta_p50_us"] - off["first_delta_p50_us"],
    }
    print(f"{'':28}{'unguarded':>14}{'guarded':>14}{'ratio':>8}")
    for label, figure in (("typed text messages/s", "messages_per_s"), ("audio MB/s (48 KB)", "audio_mb_per_s"),
                          ("first text delta p50, us", "first_delta_p50_us"), ("response.done p50, us", "done_p50_us")):
        print(f"{label:28}{off[figure]:>14.1f}{on[figure]:>14.1f}{on[figure] / off[figure]:>8.2f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "summary": summary, "results": results, "rounds": rounds}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the median of this many interleaved runs")
    parser.add_argument("--json", default=result_path("guards.json"))
    run_on_reactor(lambda: run(parser.parse_args()))


if __name__ == "__main__":
    main()
