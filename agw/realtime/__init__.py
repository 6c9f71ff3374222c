"""
The Realtime relay: an Autobahn server leg (the client's) and an upstream
leg (the provider's) joined by L{RealtimeRelay}; usage is read by
L{RealtimeUsageMixin} on the upstream leg and recorded by the session's
L{agw.metering.RealtimeSession}. Imports L{agw.routing}, L{agw.metering},
L{agw.config}; every reach into Autobahn's internals is in
L{agw._internals}.
"""

from agw.realtime._leg import RelayLeg, partner_close_code
from agw.realtime._options import CLIENT_DEFLATE
from agw.realtime._refusal import MAX_REFUSAL_BODY, Incomplete, UpstreamRefused, dechunk, parse_refusal
from agw.realtime._relay import RealtimeRelay, RealtimeResource, RelayOptions, SessionSlots, handshake_headers
from agw.realtime._sideband import CallControl, SidebandProtocol, open_sideband
from agw.realtime._usage_mixin import RealtimeUsageMixin, UsageSink
from agw.realtime._utf8 import DecoderUtf8Validator

__all__ = [
    "CallControl", "RealtimeResource", "SidebandProtocol", "open_sideband",
    "CLIENT_DEFLATE", "MAX_REFUSAL_BODY", "DecoderUtf8Validator", "Incomplete", "RealtimeRelay", "RealtimeUsageMixin",
    "RelayLeg", "RelayOptions", "SessionSlots", "UpstreamRefused", "UsageSink", "dechunk", "handshake_headers",
    "parse_refusal", "partner_close_code",
]
