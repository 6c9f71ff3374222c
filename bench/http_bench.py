"""
Non-streaming chat completion, direct to the fake upstream vs through agw,
in one run: added p50/p99 latency (1 connection) and requests/s (16
connections), plus agw's CPU per request. Load comes from wrk (apt: wrk).

    python bench/http_bench.py [--seconds 10] [--json bench/results/http.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_seconds, machine, start_agw, start_fake  # noqa: E402

LUA = """
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: int, script: str) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out).groups()
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(errors.group(1)) if errors else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "http.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(LUA)
    script.close()
    fake, fake_port = start_fake()
    gateway, port, _ = start_agw(fake_port)
    try:
        direct_url = f"http://127.0.0.1:{fake_port}/v1/chat/completions"
        agw_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk(agw_url, 4, 2, script.name)  # warm up
        results = {}
        for name, url in (("direct", direct_url), ("agw", agw_url)):
            cpu_before = cpu_seconds(gateway.pid)
            latency = wrk(url, 1, args.seconds, script.name)
            throughput = wrk(url, 16, args.seconds, script.name)
            cpu = cpu_seconds(gateway.pid) - cpu_before
            requests = latency["rps"] * args.seconds + throughput["rps"] * args.seconds
            results[name] = {"latency_1conn": latency, "throughput_16conn": throughput,
                             "agw_cpu_ms_per_request": (cpu / requests * 1e3) if name == "agw" else None}
    finally:
        gateway.terminate()
        fake.terminate()
        gateway.wait()
        fake.wait()
    d, a = results["direct"], results["agw"]
    summary = {
        "added_p50_ms": a["latency_1conn"]["p50_ms"] - d["latency_1conn"]["p50_ms"],
        "added_p99_ms": a["latency_1conn"]["p99_ms"] - d["latency_1conn"]["p99_ms"],
        "agw_rps_16conn": a["throughput_16conn"]["rps"],
        "direct_rps_16conn": d["throughput_16conn"]["rps"],
        "agw_cpu_ms_per_request": a["agw_cpu_ms_per_request"],
    }
    print(f"{'':22}{'direct':>12}{'via agw':>12}")
    for label, key in (("p50 (1 conn), ms", "p50_ms"), ("p99 (1 conn), ms", "p99_ms")):
        print(f"{label:22}{d['latency_1conn'][key]:12.3f}{a['latency_1conn'][key]:12.3f}")
    print(f"{'req/s (16 conns)':22}{d['throughput_16conn']['rps']:12.0f}{a['throughput_16conn']['rps']:12.0f}")
    print(f"added p50 {summary['added_p50_ms']:.3f} ms, added p99 {summary['added_p99_ms']:.3f} ms, "
          f"agw CPU {summary['agw_cpu_ms_per_request']:.3f} ms/request")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "summary": summary, "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
