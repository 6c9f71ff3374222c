"""
Small chat completions, direct to the fake upstream, through nginx (one
worker, upstream keep-alive), through the least proxy twisted.web makes
(C{twisted_http_proxy.py}: the floor of any proxy built on it) and through
agw (one process, and C{--workers 2}), interleaved in the same rounds;
medians over the rounds.

Per target: p50/p99 with one connection, requests/s with 16 (closed loop,
wrk: C, one thread, not the bottleneck — it uses a fraction of a core at
these rates), the proxy's CPU per request (utime + stime of all its
processes, from /proc), and the time to the first byte of a streamed
completion (sequential, keep-alive, from Python). The fake counts the
upstream connections each proxy opened. Load comes from wrk (apt: wrk),
nginx from apt: nginx-light; a missing nginx is left out.

The same with streamed completions (SSE, 16 connections): requests/s.
agw runs three ways: C{--legacy-http} (twisted.web's server and Agent, as
before its own front door and client), as it is, and with C{--workers 2}.

    python bench/http_bench.py [--seconds 5] [--rounds 3] [--only "agw,agw --legacy-http"] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    HERE,
    children,
    cpu_seconds,
    free_port,
    machine,
    result_path,
    start_agw,
    start_fake,
    start_nginx,
    wait_port,
)

BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}'
STREAM_BODY = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
LUA = f"""
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client"
"""
SSE_LUA = LUA.replace(BODY, STREAM_BODY)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: int, script: str) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out).groups()
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(errors.group(1)) if errors else 0
    return result


def first_byte_ms(port: int, count: int) -> float:
    """Median time from sending a streamed completion to its first SSE event, one keep-alive connection."""
    body = STREAM_BODY.encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer sk-client\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            received = b""
            while b"data:" not in received:
                received += sock.recv(65536)
            times.append(time.perf_counter() - start)
            while not received.endswith(b"0\r\n\r\n"):  # the rest of the chunked body
                received += sock.recv(65536)
    return statistics.median(times) * 1e3


def pids_of(proc: subprocess.Popen) -> list[int]:
    return [proc.pid, *children(proc.pid)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=result_path("http.json"))
    parser.add_argument("--only", default="", help="which agw targets to run, comma-separated (default: all three; direct, nginx and the floor always run)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(LUA)
    script.close()
    sse_script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    sse_script.write(SSE_LUA)
    sse_script.close()
    fake, fake_port = start_fake(capture_output=True)
    targets: dict[str, tuple[subprocess.Popen | None, int]] = {"direct": (None, fake_port)}
    nginx = start_nginx(fake_port)
    if nginx is not None:
        targets["nginx"] = nginx
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, os.path.join(HERE, "twisted_http_proxy.py"), str(floor_port), str(fake_port)])
    wait_port(floor_port)
    targets["twisted.web floor"] = (floor, floor_port)
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    agws = {"agw --legacy-http": ("--legacy-http",), "agw": (), "agw --workers 2": ("--workers", "2")}
    for name, flags in agws.items():
        if not wanted or name in wanted:
            proc, port, _ = start_agw(fake_port, *flags)
            targets[name] = (proc, port)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    try:
        for _, target_port in targets.values():
            wrk(f"http://127.0.0.1:{target_port}/v1/chat/completions", 4, 1, script.name)  # warm up
        for _ in range(args.rounds):
            for name, (proc, target_port) in targets.items():
                url = f"http://127.0.0.1:{target_port}/v1/chat/completions"
                pids = pids_of(proc) if proc is not None else []
                cpu_before = sum(cpu_seconds(pid) for pid in pids)
                latency = wrk(url, 1, args.seconds, script.name)
                throughput = wrk(url, 16, args.seconds, script.name)
                streamed = wrk(url, 16, args.seconds, sse_script.name)
                cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
                requests = latency["requests"] + throughput["requests"] + streamed["requests"]
                runs[name].append({
                    "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"], "rps_16": throughput["rps"],
                    "sse_rps_16": streamed["rps"], "sse_p50_ms": streamed["p50_ms"],
                    "errors": latency["errors"] + throughput["errors"] + streamed["errors"],
                    "cpu_ms_per_request": cpu / requests * 1e3 if pids and requests else None,
                    "first_byte_ms": first_byte_ms(target_port, 300),
                })
    finally:
        for proc, _ in targets.values():
            if proc is not None:
                proc.terminate()
                proc.wait()
        fake.terminate()
        fake_output = fake.communicate()[0]
    connections = re.search(r"connections accepted: (\d+)", fake_output or "")

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r[key] is not None]
        return statistics.median(values) if values else None

    summary = {name: {key: median(name, key) for key in runs[name][0]} for name in runs}
    direct = summary["direct"]
    for values in summary.values():
        values["added_p50_ms"] = values["p50_ms"] - direct["p50_ms"]
        values["added_first_byte_ms"] = values["first_byte_ms"] - direct["first_byte_ms"]
        values["rps_ratio"] = values["rps_16"] / direct["rps_16"]
        values["sse_rps_ratio"] = values["sse_rps_16"] / direct["sse_rps_16"]
    nginx_ratio = summary["nginx"]["rps_ratio"] if "nginx" in summary else None
    for values in summary.values():
        values["of_nginx_ratio"] = values["rps_ratio"] / nginx_ratio if nginx_ratio else None
    print(f"{args.rounds} rounds of {args.seconds} s, medians; {os.cpu_count()} cores shared by wrk, the fake and the proxy")
    print(f"{'':18}{'p50 ms':>8}{'+p50 ms':>9}{'p99 ms':>8}{'req/s 16c':>11}{'x direct':>9}{'/nginx':>8}{'CPU us/req':>11}"
          f"{'TTFB ms':>9}{'+TTFB ms':>10}{'SSE req/s':>10}{'x direct':>9}{'errors':>7}")
    for name, v in summary.items():
        cpu = f"{v['cpu_ms_per_request'] * 1000:11.0f}" if v["cpu_ms_per_request"] is not None else f"{'-':>11}"
        of_nginx = f"{v['of_nginx_ratio']:8.2f}" if v["of_nginx_ratio"] is not None else f"{'-':>8}"
        print(f"{name:18}{v['p50_ms']:8.3f}{v['added_p50_ms']:9.3f}{v['p99_ms']:8.3f}{v['rps_16']:11.0f}{v['rps_ratio']:9.2f}"
              f"{of_nginx}{cpu}{v['first_byte_ms']:9.3f}{v['added_first_byte_ms']:10.3f}{v['sse_rps_16']:10.0f}"
              f"{v['sse_rps_ratio']:9.2f}{v['errors']:7.0f}")
    if connections:
        print(f"upstream connections the fake accepted, all targets together: {connections.group(1)}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "summary": summary, "runs": runs,
                   "fake_connections": int(connections.group(1)) if connections else None}, f, indent=2)


if __name__ == "__main__":
    main()
