"""
A Realtime session's handshake handed by agw's front door straight to the
relay's Autobahn server protocol, as Autobahn's C{WebSocketResource} hands
it one from twisted.web, without a twisted.web channel and request built
for it first: the transport's protocol becomes the relay's, which is given
the head (as C{WebSocketResource} re-frames it) and whatever followed it,
parses the handshake and answers it (L{agw.realtime} C{onConnect}).
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper

from agw.serve._front_request import FrontRequest

# twisted.web's HTTPChannel refuses a head (request line and header lines) over this many bytes
# (totalHeadersSize): such a head goes to it, not to the relay, and is refused as before.
TWISTED_WEB_HEAD = 16384


def web_head_size(request: FrontRequest) -> int:
    """The size of C{request}'s head as twisted.web's channel counts it (each line without its CRLF)."""
    line = len(request.method) + len(request.target) + 10  # "GET <target> HTTP/1.1"
    return line + sum(len(name) + len(value) + 2 for name, value in request.requestHeaders.pairs)


def handshake_head(request: FrontRequest) -> bytes:
    """
    C{request}'s head as C{WebSocketResource} gives it to Autobahn: the
    normalised target, HTTP/1.1, each header's values joined on one line
    (a header sent twice is one value to Autobahn, as it was through twisted.web).
    """
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in request.requestHeaders.pairs:
        grouped.setdefault(name, []).append(value)
    lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
    lines.extend(name + b": " + b",".join(values) for name, values in grouped.items())
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


class SessionTakeover:
    """
    The rest of a front-door connection, from a Realtime handshake on (see
    L{request}), given to a protocol of C{factory} (the relay's Autobahn
    server factory) once the bytes after its head are known (L{replay}).
    """

    def __init__(self, factory: Any, transport: Any) -> None:
        self._factory, self._transport = factory, transport
        self._head = b""
        self._protocol: Any = None

    def request(self, request: FrontRequest) -> None:
        """The handshake (the last request the door reads on this connection: llhttp stops at an upgrade)."""
        self._head = handshake_head(request)

    def replay(self, received: list[bytes]) -> None:
        """The connection is the relay's from now on: C{received} (emptied), what followed the head, goes to it first."""
        transport = self._transport
        protocol = self._protocol = self._factory.buildProtocol(transport.getPeer())
        # As WebSocketResource does: inside TLS, the TLS protocol's wrapped protocol is replaced.
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        # The door's reasons to stop reading (a request before this one) are not the relay's: it reads from now on,
        # as WebSocketResource resumes the transport twisted.web paused.
        transport.resumeProducing()
        protocol.makeConnection(transport)
        rest = b"".join(received)
        received.clear()
        protocol.dataReceived(self._head + rest)

    # The transport calls the relay's protocol itself once it has it; these are the door's, before that.

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._protocol is not None:
            self._protocol.dataReceived(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self._protocol is not None:
            self._protocol.connectionLost(reason)
