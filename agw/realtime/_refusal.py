"""
A provider's refusal of a WebSocket handshake (a non-101 answer), read
whole from the raw bytes Autobahn collected: status, headers and body,
whether the body is framed by C{Content-Length}, chunked, or ends with the
connection. Pure functions; the upstream leg feeds them.
"""

from __future__ import annotations

# How much of a refusal body is kept for the client (provider errors are small).
MAX_REFUSAL_BODY = 64 * 1024


class UpstreamRefused(Exception):
    """The provider answered the WebSocket handshake with a non-101 status."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class Incomplete(Exception):
    """More bytes are needed."""


def dechunk(data: bytes, limit: int = MAX_REFUSAL_BODY) -> bytes:
    """
    The body of a chunked transfer coding (RFC 9112 section 7.1), cut to
    C{limit} bytes; raises L{Incomplete} until the last chunk (and the
    blank line after any trailers) has arrived, C{ValueError} if it is
    malformed.
    """
    body, position = [], 0
    kept = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            if len(data) - position > 1024:
                raise ValueError("chunk size line too long")
            raise Incomplete()
        size_text = data[position:line_end].split(b";", 1)[0].strip()
        size = int(size_text, 16)  # ValueError when not hex
        position = line_end + 2
        if size == 0:
            if data.find(b"\r\n\r\n", position - 2) < 0:
                raise Incomplete()  # trailers still arriving
            return b"".join(body)
        if len(data) < position + size + 2:
            if kept >= limit:
                return b"".join(body)  # enough kept: the rest will not be shown
            raise Incomplete()
        if kept < limit:
            piece = data[position:position + min(size, limit - kept)]
            body.append(piece)
            kept += len(piece)
        position += size + 2


def parse_refusal(data: bytes, complete: bool = False) -> UpstreamRefused | None:
    """
    The refusal in C{data} (the raw answer to a handshake): C{None} for a
    101 or a status line Autobahn should judge itself; raises L{Incomplete}
    while the body is still arriving, unless C{complete} (the connection
    ended: what arrived is all there is).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if complete:
            return None
        raise Incomplete()
    head = data[:end].decode("iso-8859-1").split("\r\n")
    status_line = head[0].split(" ", 2)
    try:
        status = int(status_line[1])
    except (IndexError, ValueError):
        return None  # Autobahn reports a malformed status line itself.
    if status == 101:
        return None
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in head[1:] if ":" in line)]
    fields = {name.lower(): value for name, value in headers}
    raw_body = data[end + 4:]
    reason = status_line[2] if len(status_line) > 2 else ""
    if status in (204, 304) or status < 200:
        body = b""  # never a body (RFC 9112 section 6.3)
    elif "chunked" in fields.get("transfer-encoding", "").lower():
        try:
            body = dechunk(raw_body)
        except Incomplete:
            if not complete:
                raise
            body = b""  # cut off mid-body: nothing trustworthy to show
        except ValueError:
            body = b""
    elif fields.get("content-length", "").isdigit():
        wanted = min(int(fields["content-length"]), MAX_REFUSAL_BODY)
        if len(raw_body) < wanted and not complete:
            raise Incomplete()
        body = raw_body[:wanted]
    else:
        # Delimited by the end of the connection (RFC 9112 section 6.3).
        if not complete and len(raw_body) < MAX_REFUSAL_BODY:
            raise Incomplete()
        body = raw_body[:MAX_REFUSAL_BODY]
    return UpstreamRefused(status, reason, headers, body)
