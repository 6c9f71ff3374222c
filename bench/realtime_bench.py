"""
The Realtime relay, direct to the fake upstream vs through agw (twistd, one
process), in one run:

- direct, nginx (Debian's nginx-light, one worker, a generated WebSocket
  proxy config), socat, a Twisted TCP relay, agw (frame pass-through) and
  agw --message-relay (every message unmasked, validated and re-framed: the
  path before the pass-through), interleaved rounds;
- round trip of a small event on one session (p50/p99, 2,000 round trips);
- messages/s with 8 sessions x 16 in flight;
- input_audio_buffer.append MB/s with 48 KB chunks on one session;
- RSS per idle session with --idle sessions open (agw, and nginx's worker);
- CPU per relayed message of agw and nginx (user+system time from /proc, as
  getrusage counts it for another process);
- the same through two byte relays (socat if installed, and a Twisted TCP
  relay): the floor any relay pays on this machine (--no-floors skips them);
- then the completions figures of bench/http_bench.py (needs wrk; --no-http
  skips them).

The load generator is Autobahn on Twisted in this process; the fake and agw
are separate processes. Writes JSON (default bench/results/realtime.json).

    python bench/realtime_bench.py [--idle 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    children,
    cpu_seconds,
    machine,
    result_path,
    rss_kib,
    run_on_reactor,
    start_agw,
    start_byte_relays,
    start_fake,
    start_nginx,
)

ECHO = json.dumps({"type": "test.echo", "event_id": "evt_bench", "n": 1}).encode()
APPEND = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (48 * 1024)}).encode()


class Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.waiting: list[defer.Deferred[bytes]] = []
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.waiting and b"test.echo" in payload[:40]:
            self.waiting.pop(0).callback(payload)

    def echo(self) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append(d)
        self.sendMessage(ECHO)
        return d


def connect(port: int, protocol: type[Client] = Client) -> defer.Deferred[Client]:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/v1/realtime?model=bench", headers={"Authorization": "Bearer sk-client"})
    factory.protocol = protocol
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    factory.opened = defer.Deferred()
    TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory).addErrback(factory.opened.errback)
    return factory.opened


@defer.inlineCallbacks
def round_trips(port: int, count: int = 2000) -> Any:
    client = yield connect(port)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        yield client.echo()
        times.append((time.perf_counter() - start) * 1e6)
    client.sendClose()
    times.sort()
    return {"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)], "mean_us": statistics.mean(times), "count": count}


@defer.inlineCallbacks
def message_rate(
    port: int, sessions: int = 8, in_flight: int = 16, seconds: float = 5.0, protocol: type[Client] = Client,
    round_trip: Any = Client.echo,
) -> Any:
    """Messages/s over C{sessions} x C{in_flight} round trips (C{round_trip(client)}: an event and its answer)."""
    clients = yield defer.gatherResults([connect(port, protocol) for _ in range(sessions)])
    done = {"n": 0}
    deadline = time.perf_counter() + seconds

    @defer.inlineCallbacks
    def pump(client: Client) -> Any:
        while time.perf_counter() < deadline:
            yield round_trip(client)
            done["n"] += 1

    start = time.perf_counter()
    yield defer.gatherResults([pump(c) for c in clients for _ in range(in_flight)])
    elapsed = time.perf_counter() - start
    for c in clients:
        c.sendClose()
    return {"messages_per_s": 2 * done["n"] / elapsed, "round_trips": done["n"]}  # each round trip is 2 messages


@defer.inlineCallbacks
def audio_rate(port: int, megabytes: int = 200) -> Any:
    client = yield connect(port)
    count = megabytes * 1024 * 1024 // len(APPEND)
    start = time.perf_counter()
    for i in range(count):
        client.sendMessage(APPEND)
        if i % 64 == 63:
            yield client.echo()  # keep the pipe from filling memory
    yield client.echo()
    elapsed = time.perf_counter() - start
    client.sendClose()
    return {"mb_per_s": count * len(APPEND) / 1e6 / elapsed, "messages": count}


@defer.inlineCallbacks
def idle_sessions(port: int, pid: int, count: int) -> Any:
    before = rss_kib(pid)
    clients = []
    for i in range(0, count, 100):
        batch = yield defer.gatherResults([connect(port) for _ in range(min(100, count - i))])
        clients.extend(batch)
    yield defer.gatherResults([c.echo() for c in clients[:10]])
    after = rss_kib(pid)
    probe = yield round_trips(port, 200)  # still responsive with all of them open
    for c in clients:
        c.sendClose()
    return {"sessions": count, "rss_kib_per_session": (after - before) / count, "p50_us_while_open": probe["p50_us"]}


@defer.inlineCallbacks
def measure(port: int) -> Any:
    rt = yield round_trips(port)
    rate = yield message_rate(port)
    audio = yield audio_rate(port)
    return {"round_trip": rt, "rate": rate, "audio": audio}


def median_run(runs: list[Any]) -> Any:
    """Per figure, the median over rounds."""
    def median(path: tuple[str, str]) -> float:
        return statistics.median(r[path[0]][path[1]] for r in runs)

    figures = (("round_trip", "p50_us"), ("round_trip", "p99_us"), ("rate", "messages_per_s"), ("audio", "mb_per_s"))
    out: dict[str, Any] = {"rounds": runs}
    for section, name in figures:
        out.setdefault(section, {})[name] = median((section, name))
    return out


def pids(process: subprocess.Popen) -> list[int]:
    """A server's processes (nginx's master and worker)."""
    return [process.pid, *children(process.pid)]


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    fake, fake_port = start_fake()
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    gateway, port, _ = start_agw(fake_port)
    servers["agw"] = (gateway, port)
    old, old_port, _ = start_agw(fake_port, "--message-relay")
    servers["agw --message-relay"] = (old, old_port)
    nginx = start_nginx(fake_port, websocket=True)
    if nginx is not None:
        servers["nginx"] = nginx
    relays = start_byte_relays(fake_port) if args.floors else {}
    results: dict[str, Any] = {}
    try:
        for _, target in servers.values():
            yield round_trips(target, 200)  # warm up
        order = ["nginx", *relays, "agw", "agw --message-relay"]
        targets = {"direct": fake_port, **{name: (servers.get(name) or relays[name])[1] for name in order if name in servers or name in relays}}
        rounds: dict[str, list[Any]] = {name: [] for name in targets}
        cpu = {name: [0.0, 0] for name in servers}
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit all alike
            for name, target in targets.items():
                watched = pids(servers[name][0]) if name in servers else []
                cpu0 = sum(cpu_seconds(pid) for pid in watched)
                run_ = yield measure(target)
                rounds[name].append(run_)
                if name in servers:
                    cpu[name][0] += sum(cpu_seconds(pid) for pid in watched) - cpu0
                    cpu[name][1] += 2 * run_["round_trip"]["count"] + 2 * run_["rate"]["round_trips"] + run_["audio"]["messages"]
        results = {name: median_run(runs) for name, runs in rounds.items()}
        for name, (seconds, messages) in cpu.items():
            results[name]["cpu_us_per_message"] = seconds / messages * 1e6
        results["idle"] = yield idle_sessions(port, gateway.pid, args.idle)
        if nginx is not None:
            worker = children(nginx[0].pid)[0]
            results["idle nginx"] = yield idle_sessions(nginx[1], worker, args.idle)
    finally:
        for process in [fake, *(p for p, _ in servers.values()), *(p for p, _ in relays.values())]:
            process.terminate()
            process.wait()
    d, a = results["direct"], results["agw"]
    summary = {
        "added_p50_us": a["round_trip"]["p50_us"] - d["round_trip"]["p50_us"],
        "messages_ratio": a["rate"]["messages_per_s"] / d["rate"]["messages_per_s"],
        "audio_ratio": a["audio"]["mb_per_s"] / d["audio"]["mb_per_s"],
        "rss_kib_per_idle_session": results["idle"]["rss_kib_per_session"],
        "agw_cpu_us_per_message": a["cpu_us_per_message"],
    }
    if "nginx" in results:
        n = results["nginx"]
        summary["nginx"] = {
            "added_p50_us": n["round_trip"]["p50_us"] - d["round_trip"]["p50_us"],
            "messages_ratio": n["rate"]["messages_per_s"] / d["rate"]["messages_per_s"],
            "audio_ratio": n["audio"]["mb_per_s"] / d["audio"]["mb_per_s"],
            "rss_kib_per_idle_session": results["idle nginx"]["rss_kib_per_session"],
            "cpu_us_per_message": n["cpu_us_per_message"],
        }
    runs = [name for name in results if not name.startswith("idle")]
    print(f"{'':24}" + "".join(f"{name:>21}" for name in runs))
    rows = (
        ("round trip p50, us", lambda r: f"{r['round_trip']['p50_us']:.0f}"),
        ("added p50, us", lambda r: f"{r['round_trip']['p50_us'] - d['round_trip']['p50_us']:.0f}"),
        ("round trip p99, us", lambda r: f"{r['round_trip']['p99_us']:.0f}"),
        ("messages/s (8 x 16)", lambda r: f"{r['rate']['messages_per_s']:.0f} ({r['rate']['messages_per_s'] / d['rate']['messages_per_s']:.2f}x)"),
        ("audio MB/s (48 KB)", lambda r: f"{r['audio']['mb_per_s']:.1f} ({r['audio']['mb_per_s'] / d['audio']['mb_per_s']:.2f}x)"),
        ("CPU us/message", lambda r: f"{r['cpu_us_per_message']:.1f}" if "cpu_us_per_message" in r else "-"),
    )
    for label, cell in rows:
        print(f"{label:24}" + "".join(f"{cell(results[name]):>21}" for name in runs))
    for name in ("idle", "idle nginx"):
        if name in results:
            idle = results[name]
            print(f"{name}: {idle['sessions']} sessions, {idle['rss_kib_per_session']:.1f} KiB each, round trip p50 {idle['p50_us_while_open']:.0f} us while open")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "summary": summary, "runs": results}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the median of this many interleaved runs")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the completions figures (bench/http_bench.py)")
    parser.add_argument("--no-floors", dest="floors", action="store_false", help="skip the byte-relay baselines")
    parser.add_argument("--json", default=result_path("realtime.json"))
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    run_on_reactor(lambda: run(args))
    if args.http:
        add_completions(args.json)


def add_completions(realtime_json: str) -> None:
    """Run bench/http_bench.py (its own fake and agw) and add its completions figures to the table and JSON."""
    if shutil.which("wrk") is None:
        print("completions: skipped (needs wrk: apt-get install wrk)")
        return
    http_json = result_path("http.json")
    subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_bench.py"), "--json", http_json],
                   check=True, stdout=subprocess.DEVNULL)
    with open(http_json) as f:
        http = json.load(f)["summary"]
    agw = http["agw"]
    print(f"completions: added p50 {agw['added_p50_ms']:.2f} ms; {agw['rps_16']:.0f} requests/s via agw, "
          f"{agw['rps_ratio']:.2f}x direct; agw CPU {agw['cpu_ms_per_request']:.2f} ms/request")
    with open(realtime_json) as f:
        report = json.load(f)
    report["completions"] = http
    with open(realtime_json, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
