"""
L{CallDirectory}: the pool's side of the workers' calls (see
L{agw.serve._control}). It knows which worker supervises each call and
which worker is answering each incoming call, so that:

- an incoming call is answered once, whichever worker each delivery of its
  webhook reaches (the first claim wins);
- a hang-up reaching a worker that does not supervise the call is carried
  out by the one that does (and answered through the pool);
- the calls of a worker that died are adopted at once by a worker that
  serves (or the first to be ready again): a new sideband, the call counted
  as not metered whole. A call is hung up by agw only when agw stops.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Protocol

from twisted.logger import Logger

from agw.serve._control import CONTROL_IN_FD, encode

# Calls named in one adoption line: a worker reads lines of up to a MiB (a call is about 300 bytes).
ADOPT_BATCH = 1000


class Worker(Protocol):
    """What the directory needs of a worker process (L{agw.serve._workerprocess.WorkerProcess})."""

    index: int
    transport: Any

    @property
    def running(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class CallDirectory:
    """Which worker supervises (or answers) each call; C{workers}: the pool's, all their lives."""

    log = Logger(namespace="agw.workers")

    def __init__(self, workers: list[Any]) -> None:
        self._workers = workers
        self.calls: dict[str, tuple[int, dict[str, Any]]] = {}  # call id -> (worker, its CallInfo as JSON)
        self.claims: dict[str, int] = {}  # incoming calls being answered: call id -> worker
        self._routed: dict[int, tuple[Any, Any]] = {}  # a hang-up passed on: the pool's ask -> (asking worker, its ask)
        self._targets: dict[int, int] = {}  # the pool's ask -> the worker asked
        self._numbers = itertools.count(1)
        self._orphans: list[dict[str, Any]] = []  # calls of dead workers no worker could adopt yet
        self.stopping = False

    def received(self, worker: Worker, line: bytes) -> None:
        """A line from C{worker}'s control pipe."""
        try:
            message = json.loads(line)
            self._dispatch(worker, message["op"], message)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.log.error("worker {index} sent a line that is not a message", index=worker.index)

    def _dispatch(self, worker: Worker, op: str, message: dict[str, Any]) -> None:
        call_id = message.get("call_id")
        if op == "claim":
            first = call_id not in self.calls and call_id not in self.claims
            if first:
                self.claims[call_id] = worker.index
            self._send(worker, {"op": "reply", "ask": message.get("ask"), "ok": first})
        elif op == "release":
            if self.claims.get(call_id) == worker.index:
                del self.claims[call_id]
        elif op == "call":
            info = message["call"]
            self.calls[info["call_id"]] = (worker.index, info)
            self.claims.pop(info["call_id"], None)
        elif op == "ended":
            if self.calls.get(call_id, (None,))[0] == worker.index:
                del self.calls[call_id]
        elif op == "hangup":
            self._pass_hang_up(worker, message)
        elif op == "reply":
            asker = self._routed.pop(message.get("ask"), None)
            self._targets.pop(message.get("ask"), None)
            if asker is not None:
                self._send(asker[0], {**message, "ask": asker[1]})

    def _pass_hang_up(self, asker: Worker, message: dict[str, Any]) -> None:
        supervised = self.calls.get(message.get("call_id"))
        target = self._worker(supervised[0]) if supervised is not None else None
        if supervised is None or target is None or target is asker:
            # Nobody (else) supervises it; or its worker is gone and the call not adopted yet: try again.
            found = supervised is not None and target is not asker
            self._send(asker, {"op": "reply", "ask": message.get("ask"), "found": found, "status": None})
            return
        number = next(self._numbers)
        self._routed[number] = (asker, message.get("ask"))
        self._targets[number] = target.index
        self._send(target, {**message, "ask": number})

    def worker_ready(self, worker: Worker) -> None:
        """C{worker} serves (again): it adopts the calls no worker could."""
        if self._orphans and not self.stopping:
            orphans, self._orphans = self._orphans, []
            self._adopt(orphans)

    def worker_ended(self, worker: Worker) -> None:
        """C{worker}'s process ended: its claims lapse, its hang-ups fail, its calls are adopted."""
        index = worker.index
        self.claims = {call_id: owner for call_id, owner in self.claims.items() if owner != index}
        for number, target in list(self._targets.items()):
            if target == index:
                del self._targets[number]
                asker = self._routed.pop(number, None)
                if asker is not None:
                    self._send(asker[0], {"op": "reply", "ask": asker[1], "found": True, "status": None})
        self._routed = {number: asker for number, asker in self._routed.items() if asker[0] is not worker}
        orphans = [info for owner, info in self.calls.values() if owner == index]
        for info in orphans:
            del self.calls[info["call_id"]]
        if orphans and not self.stopping:
            self.log.warn("worker {index} ended with {count} calls: adopting them", index=index, count=len(orphans))
            self._adopt(orphans)

    def _adopt(self, orphans: list[dict[str, Any]]) -> None:
        serving = [worker for worker in self._workers if worker.running and worker.ready]
        if not serving:
            self._orphans.extend(orphans)  # the first worker to be ready takes them
            return
        load = {worker.index: 0 for worker in serving}
        for owner, _ in self.calls.values():
            if owner in load:
                load[owner] += 1
        adopter = min(serving, key=lambda worker: load[worker.index])
        for info in orphans:
            self.calls[info["call_id"]] = (adopter.index, info)  # hang-ups go there from now on
        for start in range(0, len(orphans), ADOPT_BATCH):  # lines a worker reads whole stay small
            self._send(adopter, {"op": "adopt", "calls": orphans[start:start + ADOPT_BATCH]})

    def _worker(self, index: int) -> Any:
        return next((worker for worker in self._workers if worker.index == index and worker.running), None)

    def _send(self, worker: Worker, message: dict[str, Any]) -> None:
        if worker.running and worker.transport is not None:
            worker.transport.writeToChild(CONTROL_IN_FD, encode(message))
