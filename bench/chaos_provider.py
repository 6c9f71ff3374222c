"""
The chaos soak's faults (bench/chaos_soak.py): the fake provider in its own
process (bench/serve_fake.py), killed and started again on the same port,
its bill in a file that outlives each process; and the schedule that kills
it, has it close every session with 1011, stalls it, and reloads agw's
config (the file rewritten, or SIGHUP to the pool's parent).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import treq
import yaml
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread

from agw.testing import Billed
from common import HERE, REPO, free_port


class FakeProvider:
    """
    bench/serve_fake.py on C{port}, its control channel on C{admin}, its
    ledger in C{ledger_path}; each start gets ids of its own.
    """

    def __init__(self, reactor: Any, directory: str, response_delay: float) -> None:
        self.reactor = reactor
        self.port, self.admin = free_port(), free_port()
        self.ledger_path = os.path.join(directory, "fake-ledger.jsonl")
        self.response_delay = response_delay
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.up = False

    def start(self) -> Deferred[None]:
        """Start it (again); fires once its control channel answers."""
        self.starts += 1
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "serve_fake.py"), str(self.port), "4", "--admin", str(self.admin),
             "--ledger", self.ledger_path, "--ids-from", str(self.starts * 10**9), "--response-delay", str(self.response_delay)],
            cwd=REPO, stdout=subprocess.DEVNULL,
        )
        return self._until_up()

    @inlineCallbacks
    def _until_up(self) -> Any:
        deadline = self.reactor.seconds() + 20
        while True:
            try:
                yield self.call("stats")
                self.up = True
                return
            except Exception:
                if self.reactor.seconds() > deadline:
                    raise
                yield deferLater(self.reactor, 0.05, lambda: None)

    @inlineCallbacks
    def call(self, command: str, **arguments: Any) -> Any:
        """POST a control command; its JSON answer."""
        response = yield treq.post(f"http://127.0.0.1:{self.admin}/{command}", params=arguments, timeout=10, persistent=False)
        return (yield response.json())

    @inlineCallbacks
    def kill(self) -> Any:
        """
        SIGKILL, so that the bill is never in doubt: answers that would bill
        are held first, and what was sent is left to reach agw (the kernel's
        send queues drained: a kill resets connections, and a reset drops
        what a queue still holds). Every response under way dies mid-stream.
        """
        deadline, drained = self.reactor.seconds() + 10, 0
        try:
            yield self.call("hold")
            while drained < 2 and self.reactor.seconds() < deadline:
                drained = drained + 1 if (yield self.call("unsent"))["unsent"] == 0 else 0
                yield deferLater(self.reactor, 0.02, lambda: None)
        finally:  # killed whatever happened: a new process needs the ports
            self.up = False
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            yield deferToThread(self.process.wait)
        return drained >= 2

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def billed(self) -> list[Billed]:
        """Every usage it billed, over all its processes."""
        with open(self.ledger_path) as f:
            return [Billed(**json.loads(line)) for line in f]


class Chaos:
    """
    The faults, each on its own period (seconds; 0: never) until the soak's
    end: reloads (the config file rewritten, a client key added or removed,
    and SIGHUP to C{agw_pid}, in turn), provider kills (down for C{down}
    seconds), 1011 closes, stalls (the provider reads nothing for C{stall} s).
    """

    def __init__(
        self, reactor: Any, fake: FakeProvider, agw_pid: int, config_path: str, periods: dict[str, float],
        down: float = 1.0, stall: float = 2.0,
    ) -> None:
        self.reactor, self.fake, self.agw_pid, self.config_path = reactor, fake, agw_pid, config_path
        self.periods, self.down, self.stall_seconds = periods, down, stall
        self.counts: Counter[str] = Counter()
        self.busy: Deferred[Any] | None = None  # a kill and restart under way
        self.failures: list[str] = []
        self._loops: list[LoopingCall] = []

    def start(self) -> None:
        actions: dict[str, Callable[[], Any]] = {
            "reload": self.reload, "kill": self.kill, "close": self.close_1011, "stall": self.stall,
        }
        for name, period in self.periods.items():
            if period > 0:
                loop = LoopingCall(self._guarded, name, actions[name])
                loop.clock = self.reactor
                self._loops.append(loop)
                loop.start(period, now=False)

    @inlineCallbacks
    def stop(self) -> Any:
        """Stop the faults; fires once the provider is up again."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self.busy is not None:
            yield self.busy

    def _guarded(self, name: str, action: Callable[[], Any]) -> Any:
        if name != "reload" and (self.busy is not None or not self.fake.up):
            self.counts[f"{name} skipped (provider down)"] += 1
            return None
        d = Deferred.fromCoroutine(self._run(name, action))
        return None if name != "kill" else d  # a LoopingCall waits for a kill: they never overlap

    async def _run(self, name: str, action: Callable[[], Any]) -> None:
        try:
            await action()
        except Exception as e:  # one failed fault is reported, the soak goes on
            self.failures.append(f"{name}: {e!r}")

    async def reload(self) -> None:
        if self.counts["reload"] % 2:
            os.kill(self.agw_pid, signal.SIGHUP)
        else:
            with open(self.config_path) as f:
                config = yaml.safe_load(f)
            for route in config["binds"][0]["listeners"][0]["routes"]:
                keys = route["policies"]["apiKey"]["keys"]
                extra = [k for k in keys if k["metadata"]["name"] == "reload-extra"]
                for k in extra:
                    keys.remove(k)
                if not extra:
                    keys.append({"key": "sk-soak-reload-extra", "metadata": {"name": "reload-extra"}})
            with open(self.config_path + ".new", "w") as f:
                yaml.safe_dump(config, f)
            os.replace(self.config_path + ".new", self.config_path)  # as editors and Kubernetes replace a file
        self.counts["reload"] += 1

    async def kill(self) -> None:
        self.busy = Deferred()
        try:
            if not (await self.fake.kill()):
                self.failures.append("kill: the provider's send queues did not drain")
            self.counts["kill"] += 1
        finally:
            try:
                await deferLater(self.reactor, self.down, lambda: None)
                await self.fake.start()
            finally:
                busy, self.busy = self.busy, None
                busy.callback(None)

    async def close_1011(self) -> None:
        self.counts["close 1011 sessions"] += (await self.fake.call("close", code=1011))["closed"]
        self.counts["close"] += 1

    async def stall(self) -> None:
        self.counts["stalled sessions"] += (await self.fake.call("stall", seconds=self.stall_seconds))["stalled"]
        self.counts["stall"] += 1
