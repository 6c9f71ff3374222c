"""
Where an idle Realtime session's memory goes: agw and the fake in this
process, N raw-socket clients (a few hundred bytes each), and tracemalloc's
difference by file before and after they connect. The fake's own leg is in
the figures too (one more Autobahn protocol per session).

    python bench/idle_memory.py [N]
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import sys
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, threads  # noqa: E402

from agw.config import parse_config  # noqa: E402
from agw.serve import Gateway  # noqa: E402
from agw.testing import FakeOpenAI  # noqa: E402
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
def main(count: int) -> Any:
    fake = FakeOpenAI()
    upstream = yield fake.listen(reactor)
    gateway = Gateway(parse_config(seed_config_text(upstream.getHost().port), {"OPENAI_API_KEY": BACKEND_KEY}))
    service = gateway.service(interface="127.0.0.1", drain_period=0)
    service.startService()
    yield service.when_listening()
    port = service.port_of(0)
    sockets = []
    for _ in range(20):  # warm up: first-use allocations are not per session
        sockets.append((yield threads.deferToThread(connect, port)))
    gc.collect()
    tracemalloc.start(10)
    before = tracemalloc.take_snapshot()
    for _ in range(count):
        sockets.append((yield threads.deferToThread(connect, port)))
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "filename")
    print(f"Python heap per session (agw's two legs and the fake's one): {sum(s.size_diff for s in stats) / count / 1024:.1f} KiB")
    for stat in stats[:14]:
        print(f"{stat.size_diff / count:8.0f} B  {stat.traceback[0].filename}")
    reactor.stop()


if __name__ == "__main__":
    reactor.callWhenRunning(main, int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    reactor.run()
