"""
The Realtime relay: an Autobahn server leg (L{server}) and upstream leg
(L{upstream}) joined by L{relay.RealtimeRelay}; usage is read by
L{usage_mixin.RealtimeUsageMixin} on the upstream leg.
"""

from agw.realtime.relay import RealtimeRelay, RelayOptions

__all__ = ["RealtimeRelay", "RelayOptions"]
