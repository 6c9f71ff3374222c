"""
Run agw.testing.FakeOpenAI on 127.0.0.1:PORT until killed (a benchmark
upstream); prints its connection count at exit. A second argument N makes
every answer N words, one delta each.

For the chaos soak (bench/chaos_soak.py), which kills it and starts it again:

    python bench/serve_fake.py PORT [WORDS] [--ledger FILE] [--admin PORT]
        [--ids-from N] [--response-delay S]

--ledger appends every usage it bills to FILE as a JSON line (an
agw.testing Billed), written before the answer goes out: a fake killed
afterwards loses nothing the file holds, so the file survives every restart
as the provider's bill. --ids-from starts session and event ids at N, so
that ids stay unique across restarts. --admin serves a control channel on
127.0.0.1:PORT (POST, JSON answers):

    /hold       hold every answer that would bill (FakeOpenAI.hold_billing)
    /release    let them go on
    /unsent     bytes written but not yet taken by the peers (kernel send
                queues, after two reactor turns flushed Twisted's buffers)
    /close?code=1011   close every open Realtime session with that code
    /stall?seconds=S   stop reading every open Realtime session for S seconds
    /stats      open Realtime sessions, responses billed

A kill that must not leave the bill in doubt is /hold, /unsent until 0,
then SIGKILL: every response under way dies mid-stream, unbilled.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import struct
import termios
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from agw.testing import Billed, FakeOpenAI


class FileLedger(list):  # type: ignore[type-arg]
    """The fake's ledger, each entry also appended to a file (one write per line: a kill cannot cut one)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, entry: Billed) -> None:
        super().append(entry)
        os.write(self._fd, (json.dumps(attrs.asdict(entry)) + "\n").encode())


def open_sessions(fake: FakeOpenAI) -> list[Any]:
    """The Realtime sessions still open (the fake's list keeps closed ones: they are dropped here)."""
    fake.sessions[:] = [session for session in fake.sessions if session.state == session.STATE_OPEN]
    return fake.sessions


def unsent_bytes() -> int:
    """Bytes in this process's TCP send queues not yet acknowledged by their peers (TIOCOUTQ on each socket)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            total += struct.unpack("i", fcntl.ioctl(int(fd), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            pass  # closed meanwhile, or a listening socket
    return total


class Admin(Resource):
    """The control channel (see the module's docstring)."""

    isLeaf = True

    def __init__(self, fake: FakeOpenAI) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Request) -> Any:
        ensureDeferred(self._answer(request))
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        fake, path = self.fake, request.path.decode()
        arguments = {k.decode(): v[0].decode() for k, v in request.args.items()}
        answer: dict[str, Any]
        if path == "/hold":
            fake.hold_billing()
            answer = {"held": True}
        elif path == "/release":
            fake.release_billing()
            answer = {"held": False}
        elif path == "/unsent":
            for _ in range(2):  # Twisted writes what a transport buffered on a later turn
                await deferLater(reactor, 0, lambda: None)
            answer = {"unsent": unsent_bytes()}
        elif path == "/close":
            sessions = list(open_sessions(fake))
            for session in sessions:
                session.close(int(arguments.get("code", 1011)), "chaos")
            answer = {"closed": len(sessions)}
        elif path == "/stall":
            sessions = list(open_sessions(fake))
            for session in sessions:
                session.transport.pauseProducing()
            reactor.callLater(float(arguments.get("seconds", 2)), lambda: [s.transport.resumeProducing() for s in sessions])
            answer = {"stalled": len(sessions)}
        elif path == "/stats":
            answer = {"open": len(open_sessions(fake)), "billed": len(fake.ledger)}
        else:
            request.setResponseCode(404)
            answer = {}
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(answer).encode())
        request.finish()


def forget_old_records(fake: FakeOpenAI) -> None:
    """Keep a long-running fake's memory flat: it keeps every handshake and request for tests to read."""
    for records in (fake.handshakes, fake.http_requests, fake.closes):
        del records[:-100]
    open_sessions(fake)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("words", type=int, nargs="?", default=0)
    parser.add_argument("--ledger", help="append every usage billed to this file (JSON lines)")
    parser.add_argument("--admin", type=int, help="serve the control channel on this port")
    parser.add_argument("--ids-from", type=int, default=1)
    parser.add_argument("--response-delay", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeOpenAI()
    if args.words:
        fake.reply_deltas = tuple(f"word{i} " for i in range(args.words))
    if args.ledger:
        fake.ledger = FileLedger(args.ledger)
    fake.ids = itertools.count(args.ids_from)
    fake.response_delay = args.response_delay
    fake.keep_received = False
    LoopingCall(forget_old_records, fake).start(5, now=False)
    if args.admin:
        site = Site(Admin(fake))
        site.log = lambda request: None  # type: ignore[method-assign]
        reactor.listenTCP(args.admin, site, interface="127.0.0.1")
    reactor.addSystemEventTrigger("before", "shutdown", lambda: print(f"connections accepted: {fake.connections}", flush=True))
    fake.listen(reactor, args.port).addCallback(lambda p: print(f"fake listening on {p.getHost().port}", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
