"""
A call's sideband: a Realtime WebSocket to the provider on a call whose
audio and events do not pass through agw (WebRTC; SIP later), opened with
the backend key at C{/v1/realtime?call_id=rtc_…}. It is the relay's
upstream leg without a client leg: the same handshake (refusals read, the
same options and timeouts), the same logger (Autobahn's raw handshakes, keys
included, never logged) and the same usage mixin, reporting to the call's
L{agw.metering.RealtimeSession}. What governance decides goes to the call's
supervisor (a L{CallControl}); the leg itself only cancels responses.
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import quote

from twisted.internet.defer import Deferred

from agw.decisions import Denial
from agw.metering import RealtimeSession
from agw.realtime._options import RelayOptions
from agw.realtime._relay import handshake_headers
from agw.realtime._upstream import UpstreamFactory, UpstreamProtocol, connect_upstream
from agw.routing import ConnectionTracker, RouteContext


class CallControl(Protocol):
    """What a sideband tells the supervisor of its call (see L{agw.calls.CallSupervisor})."""

    def response_refused(self, response_id: str | None, refusal: Denial) -> None:
        """A response the provider started is refused (the leg cancelled it already)."""

    def budget_spent(self, refusal: Denial) -> None:
        """A response's usage spent a Block budget for good: no further response can be paid for."""

    def sideband_event(self) -> None:
        """A message was read (and its usage recorded)."""

    def sideband_closed(self, leg: SidebandProtocol, was_clean: bool, code: int | None, reason: str | None) -> None:
        """The sideband is gone (the provider closed it, the connection broke, or agw closed it)."""


class SidebandProtocol(UpstreamProtocol):
    """
    The sideband leg. Reading is not paused on open (there is no client leg
    to wait for); every message is read whole, its usage recorded, and
    nothing is relayed anywhere.
    """

    control: CallControl | None = None

    def onOpen(self) -> None:
        self.factory.succeeded(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # rate_limits.updated gains agw's entries here too, but there is no one to relay it to.
        self.inspect_server_event(payload, isBinary)
        control = self.control
        if control is None:
            return
        if self.ending is not None:
            ending, self.ending = self.ending, None
            control.budget_spent(ending)
        control.sideband_event()

    def server_response_refused(self, response_id: str | None, refusal: Denial) -> None:
        """A response the provider started is refused: cancel it now (its usage still comes), then tell the supervisor."""
        self.cancel(response_id)
        if self.control is not None:
            self.control.response_refused(response_id, refusal)

    def cancel(self, response_id: str | None) -> bool:
        """Send C{response.cancel} for C{response_id} (C{None}: the default conversation's); C{False} if closing."""
        event: dict[str, Any] = {"type": "response.cancel"}
        if response_id is not None:
            event["response_id"] = response_id
        return self.send_if_open(json.dumps(event).encode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        super().onClose(wasClean, code, reason)
        control, self.control = self.control, None
        if control is not None:
            control.sideband_closed(self, wasClean, code, reason)


class SidebandFactory(UpstreamFactory):
    protocol = SidebandProtocol


def open_sideband(
    context: RouteContext, options: RelayOptions, tracker: ConnectionTracker, realtime_path: str, call_id: str,
    session: RealtimeSession,
) -> Deferred[SidebandProtocol]:
    """
    Open the sideband of call C{call_id} on C{context}'s backend (built from
    the configured backend and the route's Realtime path, never from the
    provider's C{Location}), with the backend key; fires with the open leg
    reporting to C{session}, or fails (refused, unreachable, timed out).
    """
    url = context.target.url(realtime_path, "call_id=" + quote(call_id, safe=""), websocket=True)
    headers = handshake_headers({}, (), context.policies, None, context.target.key_header)
    factory = SidebandFactory(url, headers=headers, useragent=None)
    opened: Deferred[Any] = connect_upstream(factory, context.target, context.reactor, options, tracker)

    def attach(leg: SidebandProtocol) -> SidebandProtocol:
        leg.usage_sink = session
        return leg

    return opened.addCallback(attach)
