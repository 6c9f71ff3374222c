"""
Where an idle Realtime session's memory goes: agw in this process, the fake
upstream in its own (its twisted.web request and Autobahn leg per session
are not agw's), N raw-socket clients in threads (a few hundred bytes each),
and tracemalloc's difference by file before and after they connect; also
the reactor thread's CPU time per handshake (tracemalloc off for that:
it costs more than the handshake). RSS per idle session, the figure that
counts what the allocator keeps too, is bench/realtime_bench.py's.

    python bench/idle_memory.py [N]
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, threads  # noqa: E402

from agw.config import parse_config  # noqa: E402
from agw.serve import Gateway  # noqa: E402
from common import start_fake  # noqa: E402
from tests.support import BACKEND_KEY, CLIENT_KEY, seed_config_text  # noqa: E402


def connect(port: int) -> socket.socket:
    """A session opened on a plain socket, read up to session.created (blocking: in a thread)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /v1/realtime?model=m HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode())
    data = b""
    while b"session.created" not in data:
        data += sock.recv(65536)
    return sock


@defer.inlineCallbacks
def open_sessions(port: int, count: int, sockets: list[socket.socket]) -> Any:
    """C{count} more sessions, one after the other; fires with the reactor thread's CPU seconds they took."""
    started = time.thread_time()  # this thread is the reactor's: agw's work, not the clients'
    for _ in range(count):
        sockets.append((yield threads.deferToThread(connect, port)))
    return time.thread_time() - started


@defer.inlineCallbacks
def main(count: int) -> Any:
    fake, upstream_port = start_fake()
    try:
        gateway = Gateway(parse_config(seed_config_text(upstream_port), {"OPENAI_API_KEY": BACKEND_KEY}))
        service = gateway.service(interface="127.0.0.1", drain_period=0)
        service.startService()
        yield service.when_listening()
        port = service.port_of(0)
        sockets: list[socket.socket] = []
        yield open_sessions(port, 20, sockets)  # warm up: first-use allocations are not per session
        cpu = yield open_sessions(port, count, sockets)
        gc.collect()
        tracemalloc.start(10)
        before = tracemalloc.take_snapshot()
        yield open_sessions(port, count, sockets)
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(before, "filename")
        print(f"agw's Python heap per idle session (its two legs): {sum(s.size_diff for s in stats) / count / 1024:.1f} KiB")
        print(f"reactor thread CPU per handshake: {cpu / count * 1e3:.2f} ms")
        for stat in stats[:14]:
            print(f"{stat.size_diff / count:8.0f} B  {stat.traceback[0].filename}")
    finally:
        fake.terminate()
        reactor.stop()


if __name__ == "__main__":
    reactor.callWhenRunning(main, int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    reactor.run()
