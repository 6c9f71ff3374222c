"""
L{FakeOpenAI}: the fake upstream's public face.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.web.resource import Resource
from twisted.web.server import Site

from agw._internals import DisplacingResource
from agw.testing._calls import FakeWebRTC
from agw.testing._http import FakeAzure, FakeHTTPAPI, FakeV1
from agw.testing._realtime import FakeRealtimeFactory
from agw.testing._sip import FakeSIP
from agw.testing._state import FakeState


class _FakeSite(Site):
    """The fake's site: counts the connections it accepts in a L{FakeState}, logs no requests."""

    noisy = False

    def __init__(self, state: FakeState, resource: Resource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self._state = state

    def buildProtocol(self, addr: Any) -> Any:
        self._state.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        """Nothing: what the fake received is in its records; a line per request would bury the gateway's log."""


class FakeOpenAI(FakeSIP, FakeWebRTC, FakeState):
    """
    A fake OpenAI API for tests, in-process on Twisted: serve L{resource}
    in a L{Site}, or L{listen} on loopback and point agw's C{hostOverride}
    at it.

    Every usage figure it reports is in L{ledger}; L{handshakes} and
    L{received} show what reached it; L{refuse} and L{hang} script the next
    Realtime handshake; L{sessions} are the open Realtime connections (call
    C{close(code, reason)} on one to close it from the provider's side, or
    C{transport.abortConnection()} to vanish); L{closes} holds the close
    code and reason each session ended with, as the fake saw them.

    L{connections} counts the TCP connections it accepted. L{hold_billing}
    holds every answer that would bill until L{release_billing}: a process
    killed meanwhile has sent no usage its ledger does not hold.

    HTTP: L{http_requests} records each request (headers, body size and
    hash); L{fail_http} and L{hang_http} script the next answer; setting
    L{stream_gate} to a Deferred holds the next streamed completion after
    its first chunk until it fires. Every HTTP answer sets a cookie.
    Moderations (C{POST /v1/moderations}) answer in OpenAI's shape and
    flag an input that holds one of L{moderation_flag_words}; without a
    bearer key they answer 401, as OpenAI does.
    Embeddings answer one vector per item of C{input}, each of
    C{dimensions} floats (3 by default), so a test can ask for a response
    body of any size (100 inputs of 3072 dimensions: about 6 MB).

    WebRTC (L{agw.testing.FakeWebRTC}): C{POST /v1/realtime/client_secrets}
    mints C{ek_…} secrets, C{POST /v1/realtime/calls} answers SDP offers
    with a call in L{calls} (C{rtc_…}), C{/v1/realtime?call_id=} is its
    sideband, C{…/hangup} ends it (L{hangups}); L{drive_call} has a call's
    caller speak, so that responses nobody relays are billed.

    SIP (L{agw.testing.FakeSIP}): L{ring} has a phone call come in and
    POSTs its C{realtime.call.incoming} webhook, signed with
    L{webhook_secret}, to a URL; C{…/calls/{id}/accept} and C{…/reject}
    answer it (L{accepts}, L{rejects}); L{deliveries} are the webhooks sent.
    """

    def resource(self, reactor: Any = None) -> Resource:
        """
        The fake's twisted.web tree: C{/v1/realtime} and the HTTP API under
        C{/v1}, and the same under Azure's paths (C{/openai/v1/...},
        C{/openai/deployments/D/...}, C{/openai/realtime}), where a request
        without C{api-key} (or a bearer token) is answered 401 as Azure does.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor  # client secrets expire, calls' responses take time
        root = Resource()
        realtime = DisplacingResource(FakeRealtimeFactory(self, reactor))
        http = FakeHTTPAPI(self)
        root.putChild(b"v1", FakeV1(realtime, http))
        azure = FakeAzure(realtime, http)
        root.putChild(b"openai", azure)
        root.putChild(b"api", azure)
        return root

    def listen(
        self, reactor: Any, port: int = 0, interface: str = "127.0.0.1", tls: CertificateOptions | None = None,
    ) -> Deferred[IListeningPort]:
        """
        Listen on loopback (an ephemeral port by default); over TLS with
        C{tls} (see L{agw.testing.TestCA.server_options}).
        """
        site = _FakeSite(self, self.resource(reactor), reactor)
        if tls is not None:
            return SSL4ServerEndpoint(reactor, port, tls, interface=interface).listen(site)
        return TCP4ServerEndpoint(reactor, port, interface=interface).listen(site)
