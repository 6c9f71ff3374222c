"""
Every reach into a private or undocumented part of Autobahn or Twisted, in
one place. Each is named in L{REACHES} (checked against the versions in
L{CHECKED_WITH}; tests/test_internals.py fails loudly when an upgrade
removes or renames one), with why agw needs it.

What is here:
 - L{LeanMessages}: whole WebSocket messages in and out without Autobahn's
   per-message bookkeeping (its observable C{"message"} event, traffic
   statistics, argument assertions, debug-log arguments: a large part of
   agw's CPU per relayed message), and a limit on fragments per message.
   Only the common case is shortened: an open connection, no compression,
   no fragmentation, nothing queued; everything else goes through Autobahn.
 - Reactor timers for Autobahn factories (L{use_reactor_timers}); the end
   of a connection without leftover timers or reference cycles
   (L{connection_ended}, L{DisplacingResource}, L{upgrade_done}: see
   L{agw._internals._lifecycle}).
 - Masking (L{mask_payload}, L{masked_copy}) with Autobahn's compiled XOR
   masker called directly, not through its per-call wrapper object.
 - The client leg's compression: which extension offers Autobahn sees
   (L{offer_only}) and the extension object it uses (L{use_compression}).
 - Small accessors: the raw bytes of a handshake answer, the UTF-8
   validator of a protocol, whether a twisted.web request lost its client,
   whether a protocol is between frames (the frame pass-through takes over
   there) and a way to hand it control frames; an upstream response's
   framing headers (L{keep_connection_headers}).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

from autobahn.websocket import USES_NVX
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from agw._internals._lifecycle import LIFECYCLE_REACHES, DisplacingResource, cancel_leftover_timers, connection_ended, upgrade_done
from agw._internals._reach import CHECKED_WITH, Reach
from agw._internals._prometheus import PROMETHEUS_REACHES, FastChild
from agw._internals._tcp import TCP_REACHES, write_now
from agw._internals._web import (
    WEB_REACHES,
    OwnBadRequests,
    keep_connection_headers,
    quiet_pool,
    request_disconnected,
    request_method,
    request_target,
)

_PROTOCOL = ("autobahn.websocket.protocol", "WebSocketProtocol")
_CLIENT = ("autobahn.websocket.protocol", "WebSocketClientProtocol")
_SERVER = ("autobahn.websocket.protocol", "WebSocketServerProtocol")
REACHES = (
    Reach(*_PROTOCOL, "_fail_connection", "fail a peer with a close code (more fragments than allowed: 1009)"),
    Reach(*_PROTOCOL, "_perMessageCompress", "LeanMessages: the fast path only without compression; use_compression"),
    Reach(*_PROTOCOL, "send_state", "LeanMessages: the fast path only when no frame is half sent"),
    Reach(*_PROTOCOL, "send_queue", "LeanMessages: the fast path only when nothing is queued"),
    Reach(*_PROTOCOL, "trackedTimings", "LeanMessages: the fast path only without timing tracking"),
    Reach(*_PROTOCOL, "message_data", "LeanMessages: the frames of the message being received"),
    Reach(*_PROTOCOL, "message_is_binary", "LeanMessages: the opcode of the message being received"),
    Reach(*_PROTOCOL, "failedByMe", "LeanMessages: no message after Autobahn failed the peer"),
    Reach(*_PROTOCOL, "onMessageFrameBegin", "LeanMessages: count fragments as they begin"),
    Reach(*_PROTOCOL, "onMessageEnd", "LeanMessages: deliver a message without the observable event"),
    Reach(*_PROTOCOL, "utf8validator", "use_utf8_validator: CPython's decoder instead of Autobahn's (108 us per 48 KB)"),
    Reach(*_PROTOCOL, "closedByMe", "the relay legs: whether Autobahn failed this leg's peer"),
    Reach(*_PROTOCOL, "localCloseCode", "the relay legs: the code Autobahn failed a peer with"),
    Reach(*_PROTOCOL, "sendCloseFrame", "close with any RFC 6455 code (sendClose allows 1000 and 3000-4999 only)"),
    Reach(*_PROTOCOL, "data", "handshake_bytes: the raw answer to an upstream handshake, refusals included"),
    Reach(*_CLIENT, "processHandshake", "the upstream leg reads a refusal's status, headers and whole body"),
    Reach(*_SERVER, "sendHttpErrorResponse", "the client leg answers a refusal with the provider's own status and body"),
    Reach(*_SERVER, "http_request_uri", "the raw request-target of the client's handshake"),
    Reach(*_PROTOCOL, "_batched_timer", "use_reactor_timers: every timeout is scheduled on factory._batched_timer"),
    Reach(*_PROTOCOL, "current_frame", "at_frame_boundary: the pass-through takes over between frames only"),
    Reach(*_PROTOCOL, "inside_message", "at_frame_boundary: ... and between messages"),
    Reach(*_PROTOCOL, "_dataReceived", "feed_autobahn: control frames go to Autobahn's own handling (ping, pong, close)"),
    Reach(*_SERVER, "websocket_extensions", "offer_only: offers agw declines never reach Autobahn's parser (it answers 400)"),
) + WEB_REACHES + TCP_REACHES + PROMETHEUS_REACHES + LIFECYCLE_REACHES + ((
    # Only when Autobahn uses its compiled masker (USES_NVX).
    Reach("_nvx_xormasker", "lib", "nvx_xormask_new", "mask_payload: the compiled masker without its wrapper object"),
    Reach("_nvx_xormasker", "lib", "nvx_xormask_process", "mask_payload"),
    Reach("_nvx_xormasker", "lib", "nvx_xormask_free", "mask_payload"),
) if USES_NVX else ())

_OPEN = WebSocketProtocol.STATE_OPEN
_GROUND = WebSocketProtocol.SEND_STATE_GROUND
_TEXT, _BINARY = 0x81, 0x82  # FIN + opcode
_MASKED = 0x80
_SHORT, _MEDIUM = struct.Struct("!BB"), struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


# Autobahn's compiled XOR masker (autobahn.nvx), called directly: the
# wrapper object create_xor_masker returns costs about 2 us a call (an
# import, three CFFI allocations, two copies), 0.8 us this way. Without NVX
# (or if Autobahn renames the module) its wrapper is used.
_nvx: Any = None
if USES_NVX:
    try:
        from _nvx_xormasker import ffi as _nvx_ffi, lib as _nvx  # type: ignore[import-not-found]
    except ImportError:
        pass

# Below this size XOR-ing as one big integer beats the compiled masker
# (0.8 us a call called directly, 3 us through Autobahn's wrapper).
_SMALL = 256 if _nvx is not None else 1024


def mask_payload(mask: bytes, payload: bytes | memoryview) -> bytes:
    """C{payload} XOR-ed with the 4-byte C{mask} repeated (RFC 6455 section 5.3)."""
    masked = masked_copy(mask, payload)
    return masked if type(masked) is bytes else bytes(masked)


def masked_copy(mask: bytes, payload: bytes | memoryview) -> bytes | bytearray:
    """
    L{mask_payload} as a scratch copy to read, not to send (Autobahn wants
    C{bytes}): large payloads stay the C{bytearray} they were XOR-ed in,
    saving a copy.
    """
    length = len(payload)
    if length >= _SMALL:
        if _nvx is not None:
            masked = bytearray(payload)
            masker = _nvx.nvx_xormask_new(mask)  # copies the mask
            if masker != _nvx_ffi.NULL:
                _nvx.nvx_xormask_process(masker, _nvx_ffi.from_buffer(masked), length)
                _nvx.nvx_xormask_free(masker)
                return masked
        return create_xor_masker(mask, length).process(payload)  # type: ignore[no-any-return]
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


def frame_header(first: int, length: int, mask_bit: int) -> bytes:
    """The first bytes of a frame (RFC 6455 section 5.2) up to the masking key."""
    if length <= 125:
        return _SHORT.pack(first, mask_bit | length)
    if length <= 0xFFFF:
        return _MEDIUM.pack(first, mask_bit | 126, length)
    return _LONG.pack(first, mask_bit | 127, length)


class LeanMessages:
    """
    Mixin for an Autobahn protocol (listed before it): C{sendMessage}
    writes one unfragmented frame straight to the transport, and a received
    message goes to C{onMessage} without Autobahn's observable event (one
    Deferred per message that nothing here listens to).

    Frames are the same bytes Autobahn would write; client frames are masked
    (L{mask_payload}: Autobahn's compiled masker for all but small messages).
    """

    # Provided by Autobahn's protocol classes.
    state: int
    send_state: int
    send_queue: Any
    transport: Any
    factory: Any
    failedByMe: bool
    message_data: Any
    message_is_binary: bool
    maxMessagePayloadSize: int
    autoFragmentSize: int
    maskClientFrames: bool
    maskServerFrames: bool
    logFrames: bool
    trackedTimings: Any
    _perMessageCompress: Any
    onMessage: Any

    def sendMessage(
        self, payload: bytes, isBinary: bool = False, fragmentSize: int | None = None,
        sync: bool = False, doNotCompress: bool = False,
    ) -> None:
        length = len(payload)
        if (
            self.state != _OPEN or self.send_state != _GROUND or self.send_queue
            or fragmentSize is not None or sync or self.autoFragmentSize
            or self._perMessageCompress is not None or self.logFrames or self.trackedTimings
            or 0 < self.maxMessagePayloadSize < length
        ):
            # Autobahn handles (or refuses) everything else.
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[misc]
            return
        first = _BINARY if isBinary else _TEXT
        if self.maskServerFrames if self.factory.isServer else self.maskClientFrames:
            # The same mask source as Autobahn (see its sendFrame on why).
            mask = struct.pack("!I", random.getrandbits(32))
            self.transport.write(frame_header(first, length, _MASKED) + mask + mask_payload(mask, payload))
        else:
            self.transport.write(frame_header(first, length, 0) + payload)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)  # type: ignore[misc]
        # Each fragment is a list entry until the message ends: a message of
        # a million 1-byte fragments costs far more memory than its size
        # limit says. Autobahn has no such limit; agw fails the peer with
        # 1009 as Autobahn does for an oversized message.
        limit = getattr(self.factory, "max_fragments", 0)
        if limit and not self.failedByMe and len(self.message_data) >= limit:
            self._fail_connection(1009, f"received WebSocket message has more than {limit} fragments")  # type: ignore[attr-defined]

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None


# --- Reactor timers for Autobahn factories
#
# Autobahn schedules its handshake, ping and close timeouts on a txaio
# "batched timer" bound to the global reactor. Cancelling a batched call
# leaves the bucket's DelayedCall pending (up to the ping interval), and it
# cannot be driven by a test Clock. agw gives each factory plain
# reactor.callLater timers instead: cancelled means gone, and the reactor
# that is passed in (real or fake) is the one that counts.


class ReactorTimer:
    """The part of txaio's batched timer interface Autobahn uses."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._reactor.callLater(delay, func, *args, **kwargs)


def use_reactor_timers(factory: Any, reactor: IReactorTime) -> None:
    """Make an Autobahn factory's protocols time out on C{reactor}."""
    # Every timeout in autobahn.websocket.protocol goes through it.
    factory._batched_timer = ReactorTimer(reactor)


# --- Accessors


def handshake_bytes(protocol: Any) -> bytes:
    """What an Autobahn client protocol has received of the handshake answer so far."""
    return protocol.data  # type: ignore[no-any-return]


def at_frame_boundary(protocol: Any) -> bool:
    """Whether an open Autobahn protocol has no frame or message half read, nothing buffered, and no compression."""
    return (
        protocol.state == _OPEN and protocol.current_frame is None and not protocol.inside_message
        and not protocol.data and protocol._perMessageCompress is None
    )


def feed_autobahn(protocol: Any, data: bytes) -> None:
    """Let Autobahn's own frame processing read C{data} (whole frames, at a frame boundary)."""
    protocol._dataReceived(data)


def offer_only(protocol: Any, extensions: list[tuple[str, dict[str, list[Any]]]]) -> None:
    """From a server protocol's C{onConnect}: the extension offers (parsed) its handshake answer considers."""
    protocol.websocket_extensions = extensions


def use_compression(protocol: Any, replace: Callable[[Any], Any]) -> Any:
    """
    From C{onOpen} (no frame read yet): replace a protocol's negotiated
    compression object, if any, with C{replace(it)}; returns the new one.
    """
    negotiated = protocol._perMessageCompress
    if negotiated is None:
        return None
    protocol._perMessageCompress = replace(negotiated)
    return protocol._perMessageCompress


def use_utf8_validator(protocol: Any, validator: Any) -> None:
    """Make an Autobahn protocol validate incoming text with C{validator} (same interface as Autobahn's)."""
    protocol.utf8validator = validator


__all__ = [
    "CHECKED_WITH", "REACHES", "DisplacingResource", "FastChild", "write_now", "LeanMessages", "OwnBadRequests", "Reach", "at_frame_boundary", "cancel_leftover_timers", "connection_ended", "feed_autobahn",
    "frame_header", "handshake_bytes", "keep_connection_headers", "mask_payload", "masked_copy", "quiet_pool",
    "request_disconnected", "request_method", "request_target", "upgrade_done", "use_reactor_timers", "use_utf8_validator",
]
