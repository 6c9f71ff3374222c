"""
agw with 1..N worker processes (twistd agw --workers N), same load each
time: messages/s with 16 sessions x 8 in flight, and the gateway's CPU per
message summed over its processes (utime + stime from /proc, the counters
getrusage reports), with each worker's share of that CPU (how evenly the
sessions spread).

On a 2-core machine the load generator and the fake upstream share the
cores with the workers: throughput cannot grow with N there; CPU per
message staying flat is what shows the workers cost nothing extra.

    python bench/workers_bench.py [--max-workers 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from twisted.internet import defer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import children, cpu_seconds, machine, result_path, run_on_reactor, start_agw, start_fake  # noqa: E402
from realtime_bench import message_rate, round_trips  # noqa: E402


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    fake, fake_port = start_fake()
    results = []
    try:
        for workers in range(1, args.max_workers + 1):
            gateway, port, _ = start_agw(fake_port, "--workers", str(workers))
            try:
                pids = children(gateway.pid) if workers > 1 else [gateway.pid]
                yield round_trips(port, 200)  # warm up
                before = {pid: cpu_seconds(pid) for pid in pids}
                rate = yield message_rate(port, sessions=16, in_flight=8, seconds=args.seconds)
                used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
                messages = 2 * rate["round_trips"]
                total = sum(used.values())
                results.append({
                    "workers": workers,
                    "messages_per_s": rate["messages_per_s"],
                    "cpu_us_per_message": total / messages * 1e6,
                    "cpu_share_per_worker": [round(used[pid] / total, 3) if total else 0 for pid in pids],
                })
            finally:
                gateway.terminate()
                gateway.wait()
    finally:
        fake.terminate()
        fake.wait()
    print(f"{'workers':>8}{'messages/s':>14}{'CPU us/message':>16}  CPU share per worker")
    for r in results:
        print(f"{r['workers']:>8}{r['messages_per_s']:>14.0f}{r['cpu_us_per_message']:>16.1f}  {r['cpu_share_per_worker']}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "runs": results}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", default=result_path("workers.json"))
    args = parser.parse_args()
    run_on_reactor(lambda: run(args))


if __name__ == "__main__":
    main()
