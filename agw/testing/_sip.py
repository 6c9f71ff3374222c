"""
The fake's phone calls: OpenAI's SIP side as a test needs it.
L{FakeSIP.ring} has a call come in: a ringing call (C{rtc_…}) in the
fake's calls, and a C{realtime.call.incoming} event POSTed over real HTTP to
the URL the test gives, signed as OpenAI signs its webhooks (Standard
Webhooks, with L{FakeSIP.webhook_secret}). C{POST …/calls/{id}/accept}
(server key, a session) puts the call through — its sideband opens from
then on, and L{agw.testing.FakeOpenAI.drive_call} has its caller speak —;
C{…/reject} ends it with a SIP status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from io import BytesIO
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from agw.testing._calls import FakeCall

DIALED = "+18005550100"
CALLER = "+14155550123"


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


@frozen
class WebhookDelivery:
    """
    One webhook request the fake sent: where, its C{webhook-id} and
    timestamp, the headers and body it sent (to send again), and what the
    receiver answered (C{status}, C{answer}); C{call_id}: the call it
    announced, if any.
    """

    url: str
    webhook_id: str
    timestamp: int
    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes
    call_id: str | None = None

    @property
    def json(self) -> Any:
        """The receiver's answer, as JSON (C{None} if it is not)."""
        try:
            return json.loads(self.answer)
        except ValueError:
            return None


class _Body(Protocol):
    """A receiver's whole answer (a few bytes of JSON), into C{done}."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done, self.parts = done, []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.parts))  # ended or cut: what came is the answer


class FakeSIP:
    """The fake's SIP calls and webhooks (mixed into L{agw.testing.FakeOpenAI})."""

    reactor: Any = None
    calls: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The project's webhook signing secret, as OpenAI's dashboard shows it once.
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        self.accepts: list[str] = []  # call ids, in the order accepted
        self.rejects: list[tuple[str, int | None]] = []  # (call id, SIP status asked for)
        self.deliveries: list[WebhookDelivery] = []

    def sign(self, webhook_id: str, timestamp: int, body: bytes, secret: str | None = None) -> dict[str, str]:
        """The Standard Webhooks headers of C{body}, signed with C{secret} (the fake's by default)."""
        secret = self.webhook_secret if secret is None else secret
        key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
        digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
        }

    def ring(
        self, url: str, to: str = DIALED, caller: str = CALLER, headers: tuple[tuple[str, str], ...] = (), **deliver: Any,
    ) -> Deferred[WebhookDelivery]:
        """
        A phone call to C{to} from C{caller} (with more SIP C{headers}):
        a ringing call, and its webhook to C{url} (C{deliver}: see
        L{deliver}); fires with the L{WebhookDelivery}.
        """
        call_id = "rtc_" + secrets.token_hex(16)
        self.calls[call_id] = FakeCall(self, call_id, "", {}, self.reactor, ringing=True)
        sip_headers = [
            {"name": "From", "value": f'"Caller" <sip:{caller}@sip.example.com>;tag={secrets.token_hex(4)}'},
            {"name": "To", "value": f"<sip:{to}@sip.example.com>"},
            {"name": "Call-ID", "value": f"{secrets.token_hex(8)}@sip.example.com"},
            *({"name": name, "value": value} for name, value in headers),
        ]
        event = {
            "object": "event", "id": "evt_" + secrets.token_hex(12), "type": "realtime.call.incoming",
            "created_at": int(self.reactor.seconds()), "data": {"call_id": call_id, "sip_headers": sip_headers},
        }
        return self.deliver(url, json.dumps(event).encode(), call_id=call_id, **deliver)

    def deliver(
        self, url: str, body: bytes, webhook_id: str | None = None, timestamp: int | None = None, secret: str | None = None,
        signature: str | None = None, call_id: str | None = None,
    ) -> Deferred[WebhookDelivery]:
        """
        POST C{body} to C{url} as OpenAI delivers a webhook: a new
        C{webhook-id} unless given, now unless C{timestamp}, signed with
        C{secret} (the fake's by default) unless C{signature} replaces it.
        """
        webhook_id = webhook_id or "wh_" + secrets.token_hex(16)
        timestamp = int(self.reactor.seconds()) if timestamp is None else timestamp
        headers = self.sign(webhook_id, timestamp, body, secret)
        if signature is not None:
            headers["webhook-signature"] = signature
        return self._send(url, webhook_id, timestamp, headers, body, call_id)

    def redeliver(self, delivery: WebhookDelivery) -> Deferred[WebhookDelivery]:
        """Deliver it again as OpenAI retries: the same C{webhook-id} and body, signed anew with a new timestamp."""
        return self.deliver(delivery.url, delivery.body, webhook_id=delivery.webhook_id, call_id=delivery.call_id)

    def replay(self, delivery: WebhookDelivery) -> Deferred[WebhookDelivery]:
        """Send it again byte for byte, as someone who saw it could."""
        return self._send(delivery.url, delivery.webhook_id, delivery.timestamp, delivery.headers, delivery.body, delivery.call_id)

    def _send(self, url: str, webhook_id: str, timestamp: int, headers: dict[str, str], body: bytes, call_id: str | None) -> Deferred[WebhookDelivery]:
        async def send() -> WebhookDelivery:
            agent = Agent(self.reactor, pool=HTTPConnectionPool(self.reactor, persistent=False))
            sent = Headers({name: [value] for name, value in headers.items()})
            sent.setRawHeaders("content-type", ["application/json"])
            sent.setRawHeaders("user-agent", ["OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"])
            response = await agent.request(b"POST", url.encode("ascii"), sent, FileBodyProducer(BytesIO(body)))
            body_read: Deferred[bytes] = Deferred()
            response.deliverBody(_Body(body_read))
            answer = await body_read
            delivery = WebhookDelivery(url, webhook_id, timestamp, dict(headers), body, response.code, answer, call_id)
            self.deliveries.append(delivery)
            return delivery

        return ensureDeferred(send())

    # The provider's endpoints

    def sip_answer(self, authorization: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer C{POST /v1/realtime/calls/{id}/accept} and C{…/reject}."""
        if not self._server_key(authorization):  # type: ignore[attr-defined]
            return _error(401, "a server API key is required", "invalid_api_key")
        _, _, _, _, call_id, action = path.split("/")
        call = self.calls.get(call_id)
        if call is None or not call.ringing:
            return _error(404, f"no incoming call {call_id} waits for an answer", "call_id_not_found")
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            return _error(400, "expected JSON")
        if not isinstance(request, dict):
            return _error(400, "expected a JSON object")
        if action == "reject":
            status = request.get("status_code")
            if status is not None and not (isinstance(status, int) and 100 <= status <= 699):
                return _error(400, "status_code must be a SIP status")
            call.ringing, call.hung_up = False, True
            call.events.append(("rejected", status))
            self.rejects.append((call_id, status))
            return 200, None
        if request.get("type") != "realtime" or not isinstance(request.get("model"), str):
            return _error(400, "expected a session: {type: realtime, model, ...}")
        call.ringing, call.session, call.model = False, request, request["model"]
        call.events.append(("accepted",))
        self.accepts.append(call_id)
        return 200, None
