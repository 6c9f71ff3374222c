"""
Calls that do not pass through agw, metered and governed anyway: OpenAI's
WebRTC endpoints on a Realtime route (L{WebRTCResource}: client secrets
that are agw's own tokens, SDP offers, hang-ups), phone calls through
OpenAI's SIP webhook (accepted or rejected by agw), and one
L{CallSupervisor} per call on the call's sideband, kept in the gateway's
L{CallRegistry}; with C{--workers}, the other processes as L{Peers}.
Imports L{agw.http} (calls to the provider) and L{agw.realtime} (the
sideband leg), and the layers below; L{agw.serve} mounts it. See
docs/webrtc.md.
"""

from agw.calls._forms import BadForm, call_form, call_id_of, parse_call_form, secret_seconds
from agw.calls._peers import NO_PEERS, CallInfo, Owner, Peers
from agw.calls._provider import Provider, ProviderUnavailable
from agw.calls._registry import CallRegistry
from agw.calls._resource import WebRTCResource
from agw.calls._supervisor import CallSupervisor, SidebandUnavailable

__all__ = [
    "NO_PEERS", "CallInfo", "Owner", "Peers",
    "BadForm", "CallRegistry", "CallSupervisor", "Provider", "ProviderUnavailable", "SidebandUnavailable", "WebRTCResource",
    "call_form", "call_id_of", "parse_call_form", "secret_seconds",
]
