"""
A byte relay in Twisted (twisted.protocols.portforward): 127.0.0.1:PORT to
127.0.0.1:TARGET, until killed. The benchmark's floor for any Python relay:
two extra TCP hops and a reactor turn each way, no WebSocket work.

    python bench/tcp_relay.py PORT TARGET
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory


def main() -> None:
    port, target = int(sys.argv[1]), int(sys.argv[2])
    factory = ProxyFactory("127.0.0.1", target)
    factory.noisy = False
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
