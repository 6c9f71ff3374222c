"""
What permessage-deflate on the client leg costs agw, per setting of
C{--client-deflate}: memory per idle session, memory and CPU under audio,
and RSS through a churn of short sessions. Clients offer compression the way
browsers and Node's C{ws} do (C{permessage-deflate; client_max_window_bits},
context takeover on their side) and compress everything they send.

For each setting, a fresh C{twistd -n agw} (the repo's config.yaml) in front
of the fake upstream (both their own processes; RSS is agw's process alone,
from /proc). Phases, in this order, on the same gateway:

- idle: N sessions opened, each with one event each way (so that whatever
  compression state a session keeps exists), then RSS per session (the
  baseline: C{off}, or C{--plain} clients that offer no compression);
- audio: 20 sessions each streaming 60 s of audio in 100 ms appends (base64
  of random bytes) and one response; agw's CPU per append and per second of
  audio, and its RSS growth;
- churn: S sessions, C at a time, each: open, an echo, 4 appends, a
  response, close. RSS after the first C, and after all of them.

Tokens: the usage every client saw in its response.done events is compared
with agw's /metrics (input and output token sums): the bench fails if they
differ.

    python bench/deflate_memory.py [--settings off,small,accept] [--idle 1000] [--sessions 10000]

A setting C{default} runs agw without the option (the build's default).
Writes JSON (default bench/results/deflate.json).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.request
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_seconds, machine, result_path, rss_kib, run_on_reactor, start_agw, start_fake  # noqa: E402

# What Chrome and Node's ws offer: the client may be told a smaller window; it keeps its context.
BROWSER_OFFER = PerMessageDeflateOffer(accept_no_context_takeover=False, accept_max_window_bits=True)
# 100 ms of 24 kHz PCM16 (random bytes: real audio compresses as little once in base64); 16 different ones
# (100 KiB), so that a client keeping its context cannot point back to an earlier identical append.
APPENDS = [
    json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(os.urandom(4800)).decode()}).encode()
    for _ in range(16)
]
ECHO = json.dumps({"type": "test.echo", "event_id": "evt_bench"}).encode()
CREATE = json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}).encode()


class Session(WebSocketClientProtocol):
    """A bench client: waits for event types, adds up the usage it is billed."""

    def onOpen(self) -> None:
        self.waiting: list[tuple[str, defer.Deferred[dict[str, Any]]]] = []
        self.seen: list[dict[str, Any]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        event = json.loads(payload)
        if event.get("type") == "response.done":
            usage = event["response"]["usage"]
            self.factory.tokens["input"] += usage["input_tokens"]
            self.factory.tokens["output"] += usage["output_tokens"]
        for i, (kind, d) in enumerate(self.waiting):
            if kind == event.get("type"):
                del self.waiting[i]
                d.callback(event)
                return
        self.seen.append(event)

    def expect(self, kind: str) -> defer.Deferred[dict[str, Any]]:
        for i, event in enumerate(self.seen):
            if event.get("type") == kind:
                del self.seen[i]
                return defer.succeed(event)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting.append((kind, d))
        return d

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        closed = getattr(self, "closed", None)
        if closed is not None and not closed.called:
            closed.callback(None)


class Clients:
    """Sessions to one gateway, compressed or not; the tokens they were billed."""

    def __init__(self, port: int, compress: bool) -> None:
        self.port, self.compress = port, compress
        self.tokens = {"input": 0, "output": 0}

    def connect(self) -> defer.Deferred[Session]:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}/v1/realtime?model=bench", headers={"Authorization": "Bearer sk-client"})
        factory.protocol = Session
        offers = [BROWSER_OFFER] if self.compress else []
        factory.setProtocolOptions(
            maxMessagePayloadSize=0, maxFramePayloadSize=0, perMessageCompressionOffers=offers,
            perMessageCompressionAccept=lambda response: PerMessageDeflateResponseAccept(response),
        )
        factory.opened, factory.tokens = defer.Deferred(), self.tokens
        TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory).addErrback(factory.opened.errback)
        return factory.opened

    @defer.inlineCallbacks
    def opened(self) -> Any:
        """An open session past session.created and one echo (both directions have carried a message)."""
        session = yield self.connect()
        yield session.expect("session.created")
        session.sendMessage(ECHO)
        yield session.expect("test.echo")
        return session

    @defer.inlineCallbacks
    def short_session(self, appends: int = 4) -> Any:
        session = yield self.opened()
        for i in range(appends):
            session.sendMessage(APPENDS[i])
        session.sendMessage(CREATE)
        yield session.expect("response.done")
        session.sendClose(1000)
        yield session.closed


def settle() -> defer.Deferred[None]:
    """Half a second for closes and timers to finish in agw."""
    return task.deferLater(reactor, 0.5, lambda: None)


@defer.inlineCallbacks
def idle(clients: Clients, pid: int, count: int) -> Any:
    yield settle()
    before = rss_kib(pid)
    sessions = []
    for i in range(0, count, 100):
        sessions += (yield defer.gatherResults([clients.opened() for _ in range(min(100, count - i))]))
    yield settle()
    after = rss_kib(pid)
    for s in sessions:
        s.sendClose(1000)
    yield defer.gatherResults([s.closed for s in sessions])
    return {"sessions": count, "kib_per_session": (after - before) / count}


@defer.inlineCallbacks
def active(clients: Clients, pid: int, sessions: int = 20, seconds: int = 60) -> Any:
    """C{sessions} each stream C{seconds} of audio in 100 ms appends (an echo every 16 keeps the pipe from filling), then a response."""
    opened = yield defer.gatherResults([clients.opened() for _ in range(sessions)])
    before, cpu0 = rss_kib(pid), cpu_seconds(pid)
    count = seconds * 10
    start = time.perf_counter()

    @defer.inlineCallbacks
    def stream(session: Session) -> Any:
        for i in range(count):
            session.sendMessage(APPENDS[i % len(APPENDS)])
            if i % 16 == 15:
                session.sendMessage(ECHO)
                yield session.expect("test.echo")
        session.sendMessage(CREATE)
        yield session.expect("response.done")

    yield defer.gatherResults([stream(s) for s in opened])
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    peak = rss_kib(pid)
    for s in opened:
        s.sendClose(1000)
    yield defer.gatherResults([s.closed for s in opened])
    return {
        "sessions": sessions, "appends": sessions * count, "cpu_us_per_append": cpu / (sessions * count) * 1e6,
        # agw's CPU per second of audio, as cores for 1,000 sessions all streaming audio at once.
        "cores_per_1000_streaming": cpu / (sessions * seconds) * 1000,
        "audio_x_realtime": sessions * seconds / elapsed, "rss_growth_kib": peak - before,
    }


@defer.inlineCallbacks
def churn(clients: Clients, pid: int, total: int, concurrency: int) -> Any:
    yield defer.gatherResults([clients.short_session() for _ in range(concurrency)])
    yield settle()
    first = rss_kib(pid)
    done, start, cpu0 = concurrency, time.perf_counter(), cpu_seconds(pid)

    @defer.inlineCallbacks
    def worker() -> Any:
        nonlocal done
        while done < total:
            done += 1
            yield clients.short_session()

    yield defer.gatherResults([worker() for _ in range(concurrency)])
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    yield settle()
    last = rss_kib(pid)
    return {
        "sessions": total, "concurrency": concurrency, "rss_first_kib": first, "rss_last_kib": last,
        "growth_mib": (last - first) / 1024, "sessions_per_s": (total - concurrency) / elapsed,
        "cpu_ms_per_session": cpu / (total - concurrency) * 1e3,
    }


def metered_tokens(stats: int) -> dict[str, float]:
    """Input and output token sums on agw's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{stats}/metrics", timeout=10).read().decode()
    sums = {"input": 0.0, "output": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = sample.labels.get("gen_ai_token_type")
            if sample.name == "agentgateway_gen_ai_client_token_usage_sum" and kind in sums:
                sums[kind] += sample.value
    return sums


@defer.inlineCallbacks
def measure(setting: str, args: argparse.Namespace, fake_port: int) -> Any:
    flags = [] if setting == "default" else ["--client-deflate", setting]
    gateway, port, stats = start_agw(fake_port, *flags, *args.agw_args)
    try:
        clients = Clients(port, compress=not args.plain)
        yield defer.gatherResults([clients.short_session() for _ in range(20)])  # warm up (first-use allocations)
        result: dict[str, Any] = {"setting": setting, "offered": not args.plain, "rss_start_kib": rss_kib(gateway.pid)}
        result["idle"] = yield idle(clients, gateway.pid, args.idle)
        result["active"] = yield active(clients, gateway.pid)
        if args.sessions:
            result["churn"] = yield churn(clients, gateway.pid, args.sessions, args.concurrency)
        yield settle()
        billed, metered = clients.tokens, metered_tokens(stats)
        result["tokens"] = {"billed": billed, "metered": metered, "exact": billed == metered}
        return result
    finally:
        gateway.terminate()
        gateway.wait()


def report(r: dict[str, Any]) -> None:
    a = r["active"]
    line = (
        f"{r['setting']:>8}{'' if r['offered'] else ' (no offer)'}: idle {r['idle']['kib_per_session']:.1f} KiB/session; "
        f"audio {a['cpu_us_per_append']:.1f} us CPU/append, {a['cores_per_1000_streaming']:.2f} cores per 1,000 streaming, "
        f"{a['audio_x_realtime']:.0f}x real time, RSS +{a['rss_growth_kib'] / 1024:.1f} MiB"
    )
    if "churn" in r:
        c = r["churn"]
        line += (
            f"; churn {c['sessions']} x{c['concurrency']}: RSS {c['rss_first_kib'] / 1024:.0f} -> {c['rss_last_kib'] / 1024:.0f} MiB"
            f" (+{c['growth_mib']:.1f}), {c['cpu_ms_per_session']:.1f} ms CPU/session"
        )
    line += f"; tokens {'exact' if r['tokens']['exact'] else 'DIFFER: ' + json.dumps(r['tokens'])}"
    print(line, flush=True)


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    fake, fake_port = start_fake()
    results = []
    try:
        for setting in args.settings.split(","):
            result = yield measure(setting, args, fake_port)
            report(result)
            results.append(result)
    finally:
        fake.terminate()
        fake.wait()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "environ": {k: v for k, v in os.environ.items() if k.startswith("MALLOC")}, "results": results}, f, indent=2)
    if not all(r["tokens"]["exact"] for r in results):
        raise SystemExit("tokens on /metrics differ from the usage the clients were billed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", default="off,small,accept", help="values of --client-deflate to run (default: the build's default)")
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions opened at once")
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions in the churn (0: none)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--plain", action="store_true", help="clients offer no compression (the baseline)")
    parser.add_argument("--json", default=result_path("deflate.json"))
    parser.add_argument("agw_args", nargs="*", help="more twistd agw options (after --)")
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    run_on_reactor(lambda: run(args))


if __name__ == "__main__":
    main()
