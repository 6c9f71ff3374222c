"""
The fake's calls: OpenAI's WebRTC side as a test needs it. Client secrets
(C{ek_…}) minted with a server key; SDP offers (raw, with a secret; or the
multipart form, with a server key) answered with a plausible SDP answer and
a call (C{rtc_…}); a call's sideband (C{/v1/realtime?call_id=…}, server
key only, no C{session.created} on attach); hang-ups; and responses a test
drives on a call as if its browser spoke (L{FakeCall.respond}), billed in
the fake's ledger whether or not a sideband sees them.
"""

from __future__ import annotations

import json
import secrets
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.web.server import Request

from agw.testing._state import Billed, Refusal, response_usage

SDP_ANSWER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n"
)
_RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 400000, "remaining": 399000, "reset_seconds": 0.15},
]


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


class FakeCall:
    """
    One call at the fake. L{events} is its timeline as the provider saw it:
    C{("accepted",)} or C{("rejected", SIP status)} for a phone call,
    C{("attached",)}, C{("cancel", response_id)}, C{("hangup",)},
    C{("detached", close code)}; L{sideband} is the sideband attached now.
    """

    def __init__(self, fake: Any, call_id: str, model: str, session: dict[str, Any], reactor: Any, ringing: bool = False) -> None:
        self.fake, self.call_id, self.model, self.session, self._reactor = fake, call_id, model, session, reactor
        self.sideband: Any = None
        self.hung_up = False
        self.ringing = ringing  # a phone call not accepted or rejected yet: no sideband
        self.events: list[tuple[Any, ...]] = []
        self._pending: dict[str, tuple[Any, int, bool, Deferred[str]]] = {}

    def send(self, event_type: str, **fields: Any) -> None:
        """A server event: the browser would see it; the sideband does if one is attached."""
        if self.sideband is not None and self.sideband.state == self.sideband.STATE_OPEN:
            self.sideband.send_event(event_type, **fields)

    def respond(self, audio: bool = True) -> Deferred[str]:
        """Start a response as server VAD does when the caller stops speaking; fires with its status when it ends."""
        fake = self.fake
        number = next(fake.response_numbers)
        response_id = f"resp_{number}"
        if fake.transcription_usage is not None:
            usage = dict(fake.transcription_usage)
            fake.ledger.append(Billed("transcription", fake.transcription_model, usage, self.call_id))
            self.send("conversation.item.input_audio_transcription.completed", item_id=f"item_{number}", transcript=fake.transcript, usage=usage)
        self.send("response.created", response={"object": "realtime.response", "id": response_id, "status": "in_progress"})
        self.send("rate_limits.updated", rate_limits=_RATE_LIMITS)
        self.send("response.output_audio_transcript.delta", response_id=response_id, delta="Hello")
        done: Deferred[str] = Deferred()
        timer = self._reactor.callLater(fake.response_delay, self._finish, response_id, "completed")
        self._pending[response_id] = (timer, number, audio, done)
        return done

    def drive(self, responses: int, audio: bool = True) -> Deferred[list[str]]:
        """C{responses} responses, one after the other (each when the one before ended); fires with their statuses."""
        async def run() -> list[str]:
            statuses = []
            for _ in range(responses):
                if self.hung_up:
                    break
                statuses.append(await self.respond(audio))
            return statuses

        return ensureDeferred(run())

    def cancel(self, response_id: str | None) -> None:
        self.events.append(("cancel", response_id))
        for pending_id, (timer, *_) in list(self._pending.items()):
            if pending_id == response_id or response_id is None:
                timer.cancel()
                if self.fake.cancel_delay > 0:
                    self._reactor.callLater(self.fake.cancel_delay, self._finish, pending_id, "cancelled")
                else:
                    self._finish(pending_id, "cancelled")

    def _finish(self, response_id: str, status: str) -> None:
        pending = self._pending.pop(response_id, None)
        if pending is None:
            return
        timer, number, audio, done = pending
        if timer.active():
            timer.cancel()
        usage = response_usage(number, audio)
        self.fake.ledger.append(Billed("chat", self.fake.realtime_model, usage, self.call_id))
        self.send("response.done", response={"object": "realtime.response", "id": response_id, "status": status, "usage": usage})
        done.callback(status)

    def hang_up(self) -> None:
        """The call ends: what runs is cancelled (and billed), the sideband is closed."""
        self.events.append(("hangup",))
        self.hung_up = True
        for response_id in list(self._pending):
            self._finish(response_id, "cancelled")
        if self.sideband is not None:
            self.sideband.close(1000, "call ended")

    # The sideband

    def attached(self, sideband: Any) -> None:
        self.sideband = sideband
        self.events.append(("attached",))

    def detached(self, sideband: Any, code: int | None) -> None:
        if self.sideband is sideband:
            self.sideband = None
            self.events.append(("detached", code))

    def on_event(self, sideband: Any, kind: str, event: dict[str, Any]) -> None:
        """A client event on the sideband."""
        if kind == "response.cancel":
            self.cancel(event.get("response_id"))
        elif kind == "response.create":
            self.respond()
        elif kind == "session.update":
            self.update_session(event.get("session") or {})
        else:
            sideband.send_event("error", error={"type": "invalid_request_error", "code": "unknown_event", "message": kind})

    def update_session(self, session: dict[str, Any]) -> None:
        """The session changes (its browser, or the sideband, sent C{session.update}): every connection hears of it."""
        self.session = {**self.session, **session}
        self.send("session.updated", session={"object": "realtime.session", "type": "realtime", "model": self.fake.realtime_model, **self.session})


class FakeWebRTC:
    """The fake's WebRTC endpoints (mixed into L{agw.testing.FakeOpenAI})."""

    ledger: list[Billed]
    reactor: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_secrets: dict[str, tuple[float, dict[str, Any]]] = {}  # ek_ -> (expires at, session)
        self.calls: dict[str, FakeCall] = {}
        self.hangups: list[str] = []  # call ids, in the order hung up
        # A server key (Authorization: Bearer) is any bearer that is not a minted secret, unless this names the only one.
        self.server_key: str | None = None

    def call(self, call_id: str) -> FakeCall:
        return self.calls[call_id]

    def drive_call(self, call_id: str, responses: int = 1, audio: bool = True) -> Deferred[list[str]]:
        """C{responses} responses on call C{call_id}, as if its caller spoke (see L{FakeCall.drive})."""
        return self.calls[call_id].drive(responses, audio) if call_id in self.calls else succeed([])

    def _bearer(self, authorization: str | None) -> str | None:
        scheme, _, token = (authorization or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _server_key(self, authorization: str | None) -> bool:
        token = self._bearer(authorization)
        if token is None or token.startswith("ek_"):
            return False
        return self.server_key is None or token == self.server_key

    def webrtc_answer(self, request: Request, path: str) -> bytes:
        """Answer C{POST /v1/realtime/client_secrets}, C{/v1/realtime/calls} and C{/v1/realtime/calls/{id}/hangup}."""
        request.content.seek(0)
        body = request.content.read()
        authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if path == "/v1/realtime/client_secrets":
            status, answer = self._mint(authorization, body)
        elif path == "/v1/realtime/calls":
            status, answer = self._offer(authorization, (request.getHeader(b"content-type") or b"").decode("latin-1"), body)
        elif path.startswith("/v1/realtime/calls/") and path.endswith("/hangup"):
            status, answer = self._hang_up(authorization, path.split("/")[4])
        elif path.startswith("/v1/realtime/calls/") and path.count("/") == 5 and path.rsplit("/", 1)[1] in ("accept", "reject"):
            status, answer = self.sip_answer(authorization, path, body)  # type: ignore[attr-defined]
        else:
            status, answer = _error(404, f"no endpoint {path}")
        request.setResponseCode(status)
        if isinstance(answer, tuple):  # a call: its Location, its SDP answer
            location, sdp = answer
            request.setHeader(b"location", location.encode())
            request.setHeader(b"content-type", b"application/sdp")
            return sdp.encode()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode() if answer is not None else b""

    def _mint(self, authorization: str, body: bytes) -> tuple[int, Any]:
        if not self._server_key(authorization):
            return _error(401, "a server API key is required", "invalid_api_key")
        try:
            request = json.loads(body)
            seconds = request.get("expires_after", {}).get("seconds", 600)
            session = request["session"]
            model = session["model"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "expected {expires_after, session: {type, model}}")
        if not isinstance(seconds, int) or not 10 <= seconds <= 7200:
            return _error(400, "expires_after.seconds must be between 10 and 7200")
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(self.reactor.seconds()) + seconds
        self.client_secrets[value] = (expires_at, session)
        minted = {"object": "realtime.session", "type": "realtime", "id": f"sess_{secrets.token_hex(6)}", "model": model, **session}
        return 200, {"value": value, "expires_at": expires_at, "session": minted}

    def _offer(self, authorization: str, content_type: str, body: bytes) -> tuple[int, Any]:
        token = self._bearer(authorization) or ""
        if content_type.partition(";")[0].strip().lower() == "application/sdp":
            secret = self.client_secrets.get(token)
            if secret is not None and secret[0] > self.reactor.seconds():
                session = secret[1]
            elif self._server_key(authorization):
                session = {"type": "realtime", "model": self.realtime_model}  # type: ignore[attr-defined]
            else:
                return _error(401, "an unexpired client secret or a server key is required", "invalid_api_key")
            sdp = body
        elif content_type.lower().startswith("multipart/form-data"):
            if not self._server_key(authorization):
                return _error(401, "the multipart form needs a server key", "invalid_api_key")
            parts = _form(body, content_type)
            sdp = parts.get("sdp", b"")
            try:
                session = json.loads(parts.get("session", b"{}"))
            except ValueError:
                return _error(400, "session is not JSON")
        else:
            return _error(415, "expected application/sdp or multipart/form-data")
        if not sdp.strip():
            return _error(400, "no SDP offer")
        call_id = "rtc_" + secrets.token_hex(16)
        self.calls[call_id] = FakeCall(self, call_id, session.get("model", ""), session, self.reactor)
        return 201, (f"/v1/realtime/calls/{call_id}", SDP_ANSWER)

    def _hang_up(self, authorization: str, call_id: str) -> tuple[int, Any]:
        if not self._server_key(authorization):
            return _error(401, "a server API key is required", "invalid_api_key")
        call = self.calls.get(call_id)
        if call is None or call.hung_up:
            return _error(404, f"no call {call_id}", "call_id_not_found")
        self.hangups.append(call_id)
        call.hang_up()
        return 200, None

    def sideband_for(self, params: dict[str, list[str]], headers: dict[str, str]) -> tuple[FakeCall | None, Refusal | None]:
        """The call a sideband handshake (C{?call_id=}) attaches to, or the refusal it gets (401, 404)."""
        if not self._server_key(headers.get("authorization")):
            return None, Refusal(401, json.dumps(_error(401, "a server API key is required", "invalid_api_key")[1]).encode())
        call = self.calls.get(params["call_id"][0])
        if call is None or call.hung_up or call.ringing:
            refusal = _error(404, "No session found for the provided call_id", "call_id_not_found")[1]
            return None, Refusal(404, json.dumps(refusal).encode())
        return call, None


def _form(body: bytes, content_type: str) -> dict[str, bytes]:
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    parts = {}
    for part in message.iter_parts() if message.is_multipart() else ():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    return parts
