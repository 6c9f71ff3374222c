"""
Exact bytes on both sides of agw: L{ScriptedUpstream}, an upstream that
answers each request as the test's script says (any bytes, or a close
without an answer), recording what arrived; and L{raw_request} /
L{read_response}, a client on a plain socket that reads one response as
the bytes it was sent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support import BACKEND_KEY, running_gateway, seed_config_text


@define
class RawRequest:
    """One request as the upstream received it: head, body, and where it came."""

    head: bytes
    body: bytes
    connection: int  # 1 for the upstream's first connection, ...
    index: int  # 0 for the first request on its connection, ...

    @property
    def method(self) -> bytes:
        return self.head.split(b" ", 1)[0]

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; a repeated header's last value."""
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


# What the upstream does with a request: bytes to write (and whether to
# close after them); b"" with close=True is a close without an answer.
Script = Callable[[RawRequest], "tuple[bytes, bool]"]


class _ScriptedProtocol(Protocol):
    def __init__(self, upstream: ScriptedUpstream, number: int) -> None:
        self._upstream = upstream
        self._number = number
        self._buffer = b""
        self._count = 0

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = int(RawRequest(head, b"", 0, 0).headers.get("content-length", "0"))
            if len(rest) < length:
                return  # the body is still on its way
            self._buffer = rest[length:]
            request = RawRequest(head, rest[:length], self._number, self._count)
            self._count += 1
            self._upstream.requests.append(request)
            answer, close = self._upstream.script(request)
            self.transport.write(answer)
            if close:
                self.transport.loseConnection()
                return


@define
class ScriptedUpstream(Factory):
    """An HTTP upstream on loopback that answers as C{script} says; C{requests} as they came."""

    script: Script
    requests: list[RawRequest] = field(factory=list)
    connections: int = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        return _ScriptedProtocol(self, self.connections)


def answer(status: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", close: bool = False) -> tuple[bytes, bool]:
    """A response as given: C{headers} exactly (add Content-Length yourself), then C{body}."""
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body, close


def ok(request: RawRequest) -> tuple[bytes, bool]:
    """A script: every request answered C{200} with C{{}}."""
    return answer(b"200 OK", [(b"Content-Length", b"2")], b"{}")


@inlineCallbacks
def gateway_to(case: TestCase, script: Script, edit: Callable[[dict], None] | None = None, **gateway: Any) -> Any:
    """
    agw (the seed config; C{edit} may change its parsed YAML) in front of a
    L{ScriptedUpstream} running C{script}; fires with (upstream, gateway
    port, the Gateway, its service).
    """
    import yaml

    upstream = ScriptedUpstream(script)
    listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(upstream)
    case.addCleanup(listening.stopListening)
    config = yaml.safe_load(seed_config_text(listening.getHost().port))
    if edit is not None:
        edit(config)
    built, service, port = yield running_gateway(case, yaml.safe_dump(config), {"OPENAI_API_KEY": BACKEND_KEY}, **gateway)
    return upstream, port, built, service


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[bytes, bytes, bool]:
    """
    One response from C{sock}: its head, its body as framed (by
    Content-Length, chunked with its chunk lines, or to the close) and
    whether the body ended as its framing says (C{False}: the connection
    closed first). C{head_only}: a HEAD's answer, no body.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lower = head.lower()
    status = int(head.split(b" ", 2)[1])
    if head_only or status in (204, 304) or 100 <= status < 200:
        return head, b"", True

    def more() -> bytes:
        return sock.recv(65536)

    if b"\r\ntransfer-encoding: chunked" in lower:
        while not _chunked_complete(body):
            chunk = more()
            if not chunk:
                return head, body, False
            body += chunk
        return head, body, True
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
            while len(body) < length:
                chunk = more()
                if not chunk:
                    return head, body, False
                body += chunk
            return head, body, True
    while chunk := more():  # close-delimited
        body += chunk
    return head, body, True


def _chunked_complete(body: bytes) -> bool:
    """Whether C{body} is a whole chunked body (ends with its last chunk and trailer section)."""
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return rest.endswith(b"\r\n") and (rest == b"\r\n" or rest.endswith(b"\r\n\r\n"))
        if len(rest) < size + 2:
            return False
        rest = rest[size + 2:]


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    """Read from C{sock} until C{marker} was received (in what was read after C{data}); all of it."""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}: {data[:200]!r}")
        data += chunk
    return data


def raw_request(port: int, data: bytes, head_only: bool = False) -> tuple[bytes, bytes, bool]:
    """Send C{data} to agw on 127.0.0.1:C{port} and read one response (L{read_response}); blocking."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_response(sock, head_only)


def header_names(head: bytes) -> list[bytes]:
    """The header names of a response head, lower case, in order."""
    return [line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:]]


def header_value(head: bytes, name: bytes) -> bytes | None:
    """The first value of header C{name} in a response head."""
    for line in head.split(b"\r\n")[1:]:
        found, _, value = line.partition(b":")
        if found.strip().lower() == name:
            return value.strip()
    return None


def decoded(head: bytes, body: bytes) -> bytes:
    """C{body} (as L{read_response} returns it) without its chunk framing, if it had one."""
    if header_value(head, b"transfer-encoding") != b"chunked":
        return body
    data, rest = b"", body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        data, rest = data + rest[:size], rest[size + 2:]
    return data


def status_and_error(response: tuple[bytes, bytes, bool]) -> tuple[int, str | None]:
    """The status of a L{read_response} answer and its OpenAI error code (C{None} if not one)."""
    head, body, _ = response
    try:
        code = json.loads(decoded(head, body))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    return int(head.split(b" ", 2)[1]), code
