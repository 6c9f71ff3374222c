"""
The control pipes between a C{--workers} pool and each worker: JSON lines
(and C{ready}) from the worker on descriptor 3, JSON lines from the pool on
descriptor 4. Over them the workers' calls are one directory
(L{agw.serve._calldirectory.CallDirectory} keeps it in the pool): a worker
says which calls it supervises, claims an incoming call before answering
it, asks for a hang-up of a call another worker supervises, and is asked in
turn — to hang one of its calls up, or to adopt the calls of a worker that
died. L{PoolChannel} is the worker's side, the L{agw.calls.Peers} of its
gateway's calls. One message is not about calls: before C{ready} a worker
tells the port of its admin API on loopback (C{{"op": "admin", "port": N}}),
which the pool's admin page gathers sessions from (L{agw.serve._poolview}).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from agw.calls import CallInfo, CallRegistry, Owner

CONTROL_FD = 3  # the worker writes, the pool reads: JSON lines (and "ready" once)
CONTROL_IN_FD = 4  # the pool writes, the worker reads: JSON lines
READY = b"ready\n"
# The environment variable a worker gets the pool's token key in (base64); never in its arguments (ps shows those).
TOKEN_KEY_ENV = "AGW_WORKER_TOKEN_KEY"
# How long a worker waits for the pool's answer: a hang-up carried out by another worker may retry the provider.
ANSWER_PATIENCE = 60.0
MAX_LINE = 1024 * 1024  # an adoption names up to every call of a worker


def encode(message: dict[str, Any]) -> bytes:
    """One line of the control pipes."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def admin_port(line: bytes) -> int | None:
    """The port an C{admin} line tells (see L{PoolChannel.admin_api}); C{None} for any other line."""
    try:
        message = json.loads(line)
        port = message["port"] if message["op"] == "admin" else None
    except (ValueError, KeyError, TypeError):
        return None
    return port if type(port) is int and 0 < port < 65536 else None


def owner_json(owner: Owner) -> list[Any]:
    return [list(owner[0]), owner[1]]


def owner_of(value: Any) -> Owner:
    return (tuple(value[0]), value[1])


class PoolChannel(LineReceiver):
    """A worker's side of the control pipes (see the module); its calls are in C{registry}."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def __init__(self, registry: CallRegistry, reactor: Any, patience: float = ANSWER_PATIENCE) -> None:
        self._registry, self._reactor, self._patience = registry, reactor, patience
        self._asks: dict[int, Deferred[dict[str, Any]]] = {}
        self._numbers = itertools.count(1)

    def admin_api(self, port: int) -> None:
        """This worker's admin API listens on loopback at C{port} (the pool's admin page asks it); before L{ready}."""
        self._tell({"op": "admin", "port": port})

    def ready(self) -> None:
        """Every bind listens: the pool counts this worker as serving."""
        self.transport.write(READY)  # type: ignore[union-attr]

    # agw.calls.Peers

    def claim(self, call_id: str) -> Deferred[bool]:
        return self._ask({"op": "claim", "call_id": call_id}).addCallback(lambda answer: bool(answer.get("ok")))

    def release(self, call_id: str) -> None:
        self._tell({"op": "release", "call_id": call_id})

    def supervising(self, info: CallInfo) -> None:
        self._tell({"op": "call", "call": info.to_json()})

    def ended(self, call_id: str) -> None:
        self._tell({"op": "ended", "call_id": call_id})

    def hang_up(self, call_id: str, owner: Owner) -> Deferred[tuple[bool, int | None]]:
        asked = self._ask({"op": "hangup", "call_id": call_id, "owner": owner_json(owner)})
        return asked.addCallback(lambda answer: (bool(answer.get("found")), answer.get("status")))

    # The pipes

    def _tell(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(encode(message))

    def _ask(self, message: dict[str, Any]) -> Deferred[dict[str, Any]]:
        number = next(self._numbers)
        answer: Deferred[dict[str, Any]] = Deferred()
        self._asks[number] = answer

        def forget(result: Any) -> Any:
            self._asks.pop(number, None)
            return result

        answer.addTimeout(self._patience, self._reactor).addBoth(forget)
        self._tell({**message, "ask": number})
        return answer

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            self.log.error("the pool sent a line that is not a message ({size} bytes)", size=len(line))
            return
        if op == "reply":
            answer = self._asks.pop(message.get("ask"), None)
            if answer is not None and not answer.called:
                answer.callback(message)
        elif op == "hangup":
            ensureDeferred(self._hang_up_here(message))
        elif op == "adopt":
            for info in message.get("calls", []):
                self._registry.adopt(CallInfo.from_json(info))

    async def _hang_up_here(self, message: dict[str, Any]) -> None:
        try:
            found, status = await self._registry.hang_up_here(message["call_id"], owner_of(message["owner"]))
        except Exception:
            self.log.failure("a hang-up asked by another worker failed")
            found, status = True, None
        self._tell({"op": "reply", "ask": message.get("ask"), "found": found, "status": status})

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        # The pool is gone (the worker stops with it): nothing it was asked will be answered.
        asks, self._asks = self._asks, {}
        for answer in asks.values():
            if not answer.called:
                answer.errback(ConnectionError("the worker pool is gone"))
