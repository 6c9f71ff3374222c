"""
Run agw.testing.FakeOpenAI on 127.0.0.1:PORT until killed (a benchmark
upstream); prints its connection count at exit. A second argument N makes
every answer N words, one delta each.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor

from agw.testing import FakeOpenAI


def main() -> None:
    port = int(sys.argv[1])
    fake = FakeOpenAI()
    if len(sys.argv) > 2:
        fake.reply_deltas = tuple(f"word{i} " for i in range(int(sys.argv[2])))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: print(f"connections accepted: {fake.connections}", flush=True))
    fake.listen(reactor, port).addCallback(lambda p: print(f"fake listening on {p.getHost().port}", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
