"""
The least an HTTP reverse proxy on twisted.web does: a C{Site} whose one
resource sends each request through an C{Agent} over a persistent pool and
writes the response back as it arrives. No routing, headers policy,
metering or limits: the benchmark's floor for agw's HTTP path, the way
C{tcp_relay.py} is for the Realtime relay.

    python bench/twisted_http_proxy.py PORT TARGET
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}


class _Body(Protocol):
    def __init__(self, request: Any) -> None:
        self.request, self.gone = request, False
        request.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, reason: Any) -> None:
        self.gone = True  # wrk hung up at the end of a run

    def dataReceived(self, data: bytes) -> None:
        if not self.gone:
            self.request.write(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.gone and not getattr(self.request, "_disconnected", False):  # gone before its answer began
            self.request.finish()


class Forward(Resource):
    isLeaf = True

    def __init__(self, agent: Agent, target: int) -> None:
        super().__init__()
        self.agent, self.target = agent, target

    def render(self, request: Any) -> Any:
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() not in _HOP})
        size = request.content.seek(0, 2)
        request.content.seek(0)
        body = FileBodyProducer(request.content) if size else None
        d: Deferred[Any] = self.agent.request(request.method, b"http://127.0.0.1:%d%s" % (self.target, request.uri), headers, body)

        def respond(response: Any) -> None:
            request.setResponseCode(response.code)
            for k, v in response.headers.getAllRawHeaders():
                if k.lower() not in _HOP:
                    request.responseHeaders.setRawHeaders(k, v)
            response.deliverBody(_Body(request))

        d.addCallback(respond)
        return NOT_DONE_YET


def main() -> None:
    port, target = int(sys.argv[1]), int(sys.argv[2])
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 32
    site = Site(Forward(Agent(reactor, pool=pool), target), parsePOSTFormSubmission=False)
    site.log = lambda request: None
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
