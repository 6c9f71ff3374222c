"""
Writing to a TCP connection at once. Twisted's transports queue every
write and send it on the reactor's next turn: two epoll registrations and
a loop iteration per write. An HTTP answer or request that goes out whole
in one write, on a connection with nothing queued, can be sent right away
(as nginx does); anything else takes Twisted's way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection

from agw._internals._reach import Reach

TCP_REACHES = (
    Reach("twisted.internet.abstract", "FileDescriptor", "dataBuffer", "write_now: nothing queued to send"),
    Reach("twisted.internet.abstract", "FileDescriptor", "_tempDataBuffer", "write_now: nothing queued to send"),
    Reach("twisted.internet.abstract", "FileDescriptor", "_writeDisconnected", "write_now: the write side is open"),
)


def write_now(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent at once when C{transport} is a TCP
    connection with nothing queued (what the socket does not take is
    queued as usual). Order is kept: with anything queued, it is queued
    after it.
    """
    if (
        isinstance(transport, Connection) and transport.connected
        and not transport.disconnecting and not transport._writeDisconnected
        and not transport.dataBuffer and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write finds the error and closes as it always does
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
