"""
The pool's directory of calls and a worker's side of the control pipes, on
their own (no processes): claims, hang-ups passed to the supervising worker,
the calls of a dead worker adopted by one that serves (or by the first to be
ready again), the worker's channel answering the pool, and a worker's
admin API port told over it (for the pool's admin page).
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from agw.calls import CallInfo, CallRegistry
from agw.serve._calldirectory import CallDirectory
from agw.serve._control import CONTROL_FD, CONTROL_IN_FD, MAX_LINE, PoolChannel, admin_port, encode
from agw.serve._workerprocess import WorkerProcess

ROUTE = ("3000", "bind/3000", "listener0", "route0", "")


def info(call_id: str) -> dict[str, Any]:
    return CallInfo(call_id, ROUTE, "/v1/realtime", "gpt-realtime", None, "voice-app", "sip").to_json()


class FakeWorker:
    """A worker process as the directory sees it: what the pool wrote to its control pipe."""

    def __init__(self, index: int) -> None:
        self.index, self.running, self.ready = index, True, True
        self.transport = self
        self.written: list[dict[str, Any]] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == CONTROL_IN_FD
        self.written.extend(json.loads(line) for line in data.splitlines())

    def take(self) -> list[dict[str, Any]]:
        written, self.written = self.written, []
        return written


class CallDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.one, self.two = FakeWorker(1), FakeWorker(2)
        self.directory = CallDirectory([self.one, self.two])

    def say(self, worker: FakeWorker, **message: Any) -> None:
        self.directory.received(worker, encode(message).strip())

    def test_an_incoming_call_is_claimed_once(self) -> None:
        self.say(self.one, op="claim", call_id="rtc_1", ask=1)
        self.say(self.two, op="claim", call_id="rtc_1", ask=7)
        self.assertEqual(self.one.take(), [{"op": "reply", "ask": 1, "ok": True}])
        self.assertEqual(self.two.take(), [{"op": "reply", "ask": 7, "ok": False}])
        self.say(self.one, op="call", call=info("rtc_1"))  # supervised now: still taken
        self.say(self.two, op="claim", call_id="rtc_1", ask=8)
        self.assertEqual(self.two.take()[0]["ok"], False)
        self.say(self.one, op="claim", call_id="rtc_2", ask=2)
        self.say(self.one, op="release", call_id="rtc_2")  # answering failed: a retry may claim it
        self.say(self.two, op="claim", call_id="rtc_2", ask=9)
        self.assertEqual(self.two.take()[0]["ok"], True)

    def test_hang_ups_go_to_the_supervising_worker(self) -> None:
        self.say(self.one, op="call", call=info("rtc_1"))
        owner = [list(ROUTE), "voice-app"]
        self.say(self.two, op="hangup", call_id="rtc_1", owner=owner, ask=5)
        (passed,) = self.one.take()
        self.assertEqual({k: passed[k] for k in ("op", "call_id", "owner")}, {"op": "hangup", "call_id": "rtc_1", "owner": owner})
        self.say(self.one, op="reply", ask=passed["ask"], found=True, status=200)
        self.assertEqual(self.two.take(), [{"op": "reply", "ask": 5, "found": True, "status": 200}])
        self.say(self.two, op="hangup", call_id="rtc_unknown", owner=owner, ask=6)
        self.assertEqual(self.two.take(), [{"op": "reply", "ask": 6, "found": False, "status": None}])

        # The supervising worker dies before it answers: the asker hears "no answer" (and may retry).
        self.say(self.two, op="hangup", call_id="rtc_1", owner=owner, ask=7)
        self.one.take()
        self.one.running = self.one.ready = False
        self.directory.worker_ended(self.one)
        written = self.two.take()
        self.assertEqual(written[0], {"op": "reply", "ask": 7, "found": True, "status": None})
        self.assertEqual(written[1], {"op": "adopt", "calls": [info("rtc_1")]})  # and the other adopts its call
        self.assertEqual(self.directory.calls["rtc_1"][0], 2)

    def test_dead_workers_calls_wait_for_a_ready_worker(self) -> None:
        self.say(self.one, op="call", call=info("rtc_1"))
        self.say(self.one, op="claim", call_id="rtc_2", ask=1)
        self.two.ready = False  # starting
        self.one.running = self.one.ready = False
        self.directory.worker_ended(self.one)
        self.assertEqual((self.two.take(), self.directory.claims), ([], {}))  # its claims lapse with it
        self.two.ready = True
        self.directory.worker_ready(self.two)
        self.assertEqual(self.two.take(), [{"op": "adopt", "calls": [info("rtc_1")]}])
        self.say(self.two, op="ended", call_id="rtc_1")
        self.assertEqual(self.directory.calls, {})

    def test_many_calls_are_adopted_in_lines_a_worker_reads_whole(self) -> None:
        for number in range(2500):
            self.say(self.one, op="call", call=info(f"rtc_{number}"))
        self.one.running = self.one.ready = False
        self.directory.worker_ended(self.one)
        lines = self.two.take()
        self.assertEqual([len(line["calls"]) for line in lines], [1000, 1000, 500])
        self.assertTrue(all(len(encode(line)) < MAX_LINE for line in lines))
        self.say(self.one, op="nonsense")  # logged, ignored
        self.flushLoggedErrors()

    def test_nothing_is_adopted_while_the_pool_stops(self) -> None:
        self.say(self.one, op="call", call=info("rtc_1"))
        self.directory.stopping = True
        self.one.running = False
        self.directory.worker_ended(self.one)
        self.assertEqual(self.two.take(), [])


class PoolChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CallRegistry()
        self.adopted: list[CallInfo] = []
        self.registry.adopter = self.adopted.append
        self.channel = PoolChannel(self.registry, self.clock, patience=5.0)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.registry.peers = self.channel

    def sent(self) -> list[dict[str, Any]]:
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return [json.loads(line) for line in lines]

    def test_claims_are_asked_of_the_pool(self) -> None:
        claimed = self.registry.claim("rtc_1")
        (asked,) = self.sent()
        self.assertEqual((asked["op"], asked["call_id"]), ("claim", "rtc_1"))
        self.assertFalse(self.successResultOf(self.registry.claim("rtc_1")))  # taken here already
        self.channel.lineReceived(encode({"op": "reply", "ask": asked["ask"], "ok": True}).strip())
        self.assertTrue(self.successResultOf(claimed))
        self.registry.release("rtc_1")
        self.assertEqual(self.sent(), [{"op": "release", "call_id": "rtc_1"}])

    def test_an_unanswered_ask_fails(self) -> None:
        claimed = self.registry.claim("rtc_1")
        self.clock.advance(5.0)
        self.failureResultOf(claimed)  # not known whether another worker took it: not answered (the provider retries)
        self.assertEqual(self.sent()[0]["op"], "claim")
        self.registry.claim("rtc_1")  # the retry asks the pool again
        self.assertEqual(self.sent()[0]["op"], "claim")

    def test_the_pool_asks(self) -> None:
        self.channel.lineReceived(encode({"op": "adopt", "calls": [info("rtc_1")]}).strip())
        self.assertEqual([i.call_id for i in self.adopted], ["rtc_1"])
        self.channel.lineReceived(encode({"op": "hangup", "ask": 3, "call_id": "rtc_2", "owner": [list(ROUTE), "x"]}).strip())
        self.assertEqual(self.sent(), [{"op": "reply", "ask": 3, "found": False, "status": None}])
        self.channel.lineReceived(b"not json")  # logged, ignored
        self.flushLoggedErrors()

    def test_the_admin_api_port_is_told_before_ready(self) -> None:
        self.channel.admin_api(41234)
        self.channel.ready()
        admin, ready = self.transport.value().splitlines()
        self.assertEqual((json.loads(admin), ready), ({"op": "admin", "port": 41234}, b"ready"))
        self.assertEqual(admin_port(admin), 41234)
        for line in (b"ready", b"not json", encode({"op": "admin", "port": "80"}), encode({"op": "ended", "call_id": "x"})):
            self.assertIsNone(admin_port(line.strip()))


class PoolSide:
    """What a WorkerProcess reports to: the pool, with its directory."""

    def __init__(self) -> None:
        self.reactor, self.log, self.stdout, self.directory = Clock(), Logger(), BytesIO(), self
        self.lines: list[bytes] = []
        self.readied: list[int] = []

    def received(self, worker: Any, line: bytes) -> None:
        self.lines.append(line)

    def worker_ready(self, worker: Any) -> None:
        self.readied.append(worker.index)


class WorkerProcessControlTests(SynchronousTestCase):
    def test_the_admin_port_is_the_workers_and_call_lines_the_directorys(self) -> None:
        pool = PoolSide()
        worker = WorkerProcess(pool, 2)  # type: ignore[arg-type]  # a pool in part
        call = encode({"op": "ended", "call_id": "rtc_1"})
        worker.childDataReceived(CONTROL_FD, encode({"op": "admin", "port": 41234}) + call[:5])
        worker.childDataReceived(CONTROL_FD, call[5:] + b"ready\n")
        self.assertEqual((worker.admin_port, worker.ready), (41234, True))
        self.assertEqual((pool.lines, pool.readied), ([call.strip()], [2]))
