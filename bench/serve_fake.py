"""Run agw.testing.FakeOpenAI on 127.0.0.1:PORT until killed (a benchmark upstream)."""

from __future__ import annotations

import sys

from twisted.internet import reactor

from agw.testing import FakeOpenAI


def main() -> None:
    port = int(sys.argv[1])
    FakeOpenAI().listen(reactor, port).addCallback(lambda p: print(f"fake listening on {p.getHost().port}", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
