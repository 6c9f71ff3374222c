"""
Two builds of agw behind one fake upstream, JSON completions, interleaved
rounds: CPU per request (from /proc) and requests a second of each. The
base build is another checkout of the repo (a `git worktree`), imported
through PYTHONPATH; the other is this one.

    git worktree add --detach /tmp/agw-base <commit>
    python bench/http_ab.py /tmp/agw-base [--rounds 7] [--connections 8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_seconds, start_agw, start_fake  # noqa: E402
from http_bench import LUA, wrk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="a checkout of the build to compare with (its agw is imported from there)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.base, "agw")):
        sys.exit(f"{args.base}: not a checkout of agw")
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(LUA)
    script.close()
    fake, fake_port = start_fake(capture_output=True)
    builds = {}
    try:
        os.environ["PYTHONPATH"] = os.path.abspath(args.base)  # twistd's path starts with its own directory, not the cwd
        builds["base"] = start_agw(fake_port)
        del os.environ["PYTHONPATH"]
        builds["this"] = start_agw(fake_port)
        results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in builds}
        for _, port, _ in builds.values():
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", 4, 1, script.name)  # warm up
        for _ in range(args.rounds):
            for name, (proc, port, _) in builds.items():
                before = cpu_seconds(proc.pid)
                run = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.connections, args.seconds, script.name)
                results[name][0].append((cpu_seconds(proc.pid) - before) / run["requests"] * 1e6)
                results[name][1].append(run["rps"])
        for name, (cpu, rps) in results.items():
            print(f"{name:5} CPU µs/request median {statistics.median(cpu):4.0f} {[round(x) for x in cpu]}"
                  f"  req/s median {statistics.median(rps):6.0f}")
    finally:
        for proc, _, _ in builds.values():
            proc.terminate()
            proc.wait()
        fake.terminate()
        os.unlink(script.name)


if __name__ == "__main__":
    main()
