"""
A fake OpenAI Realtime endpoint on Autobahn: GA events, usage on every
C{response.done}, a ledger of everything it billed, and scripted failures.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred

from agw._internals import connection_ended, upgrade_done, use_reactor_timers
from agw.config import MiB
from agw.testing._http import azure_refusal
from agw.testing._state import _HANG, Billed, FakeState, Handshake, Refusal, response_usage
from agw.testing._stream import AudioStream


class FakeRealtimeProtocol(WebSocketServerProtocol):
    """One fake Realtime session. Test events: C{test.echo} (echoed back
    whole), C{test.stream} (C{bytes} of audio deltas in C{chunk}-sized
    events), C{test.invalid_utf8} (answered with a text message that is
    not UTF-8); binary messages are echoed."""

    factory: FakeRealtimeFactory
    call: Any = None  # the call this connection is the sideband of (see agw.testing._calls)
    # Autobahn answers a malformed handshake (sendHttpErrorResponse) before onConnect sets this.
    _refusal: Refusal | None = None

    def onConnect(self, request: ConnectionRequest) -> Any:
        fake = self.factory.fake
        fake.handshakes.append(
            Handshake(self.http_request_uri, dict(request.headers), tuple(request.protocols), tuple(request.extensions))
        )
        self._refusal: Refusal | None = fake.take_refusal()
        if self._refusal is None and request.path.startswith("/openai/"):
            self._refusal = azure_refusal(request.path, request.params, request.headers)
        if self._refusal == _HANG:
            return Deferred()  # accept TCP, never answer
        if self._refusal is None and "call_id" in request.params:
            self.call, self._refusal = fake.sideband_for(request.params, request.headers)  # type: ignore[attr-defined]
        if self._refusal is not None:
            raise ConnectionDeny(self._refusal.status, "Refused")
        self.model = fake.realtime_model
        self.session_id = f"sess_{next(fake.ids)}"
        # Responses under way: id -> (timer, number, audio, in the default conversation).
        self._pending: dict[str, tuple[Any, int, bool, bool]] = {}
        self._outputs: dict[str, list[dict[str, Any]]] = {}  # response id -> its output items (fake.output_items)
        return None

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        refusal = self._refusal or Refusal(code)
        head = [f"HTTP/1.1 {code} {reason}"] + [f"{k}: {v}" for k, v in refusal.headers]
        if not refusal.chunked:
            head += [f"Content-Length: {len(refusal.body)}", "", ""]
            self.sendData("\r\n".join(head).encode("iso-8859-1") + refusal.body)
            return
        head += ["Transfer-Encoding: chunked", "", ""]
        self.sendData("\r\n".join(head).encode("iso-8859-1"))
        body, size = refusal.body, refusal.chunk_size
        for start in range(0, len(body), size):
            piece = body[start:start + size]
            self.sendData(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        self.sendData(b"0\r\nX-Trailer: t\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.factory.fake.record_wire and self.state == self.STATE_OPEN:
            self.factory.fake.wire.append(data)
        super().dataReceived(data)

    def onOpen(self) -> None:
        upgrade_done(self)
        if self.call is not None:
            return self.call.attached(self)  # type: ignore[no-any-return]  # no session.created on a sideband
        self.factory.fake.sessions.append(self)
        self.send_event("session.created", session=self.session())

    def session(self) -> dict[str, Any]:
        session: dict[str, Any] = {"object": "realtime.session", "type": "realtime", "id": self.session_id, "model": self.model}
        fake = self.factory.fake
        if fake.transcription_usage is not None:
            session["audio"] = {"input": {"transcription": {"model": fake.transcription_model}}}
        return session

    def send_event(self, event_type: str, **fields: Any) -> None:
        fake = self.factory.fake
        event = {"event_id": f"event_{next(fake.ids)}", **fields}
        # OpenAI writes "type" first; a provider need not.
        event = {**event, "type": event_type} if fake.type_last else {"type": event_type, **event}
        self.sendMessage(json.dumps(event).encode())

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        connection_ended(self, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        getattr(self.call, "detached", lambda *_: None)(self, code)  # a sideband: its call hears of it
        for call, *_ in getattr(self, "_pending", {}).values():
            if call.active():
                call.cancel()
        if self in self.factory.fake.sessions:
            self.factory.fake.closes.append((code, reason))

    def close(self, code: int | None, reason: str = "") -> None:
        """
        Close with any code (Autobahn's sendClose refuses 1001, 1011...);
        C{None} sends a close frame without a code.
        """
        self.sendCloseFrame(code, (reason.encode() or None) if code is not None else None, isReply=False)

    def dropConnection(self, abort: bool = False) -> None:
        # With FakeState.hold_tcp the TCP connection outlives the close
        # handshake until release(): the peer stays in its closing state.
        if self.factory.fake.hold_tcp and self.state != self.STATE_OPEN:
            self._held_drop = abort
            return
        super().dropConnection(abort)

    def release(self) -> None:
        """End a TCP connection that L{FakeState.hold_tcp} kept open."""
        if getattr(self, "_held_drop", None) is not None:
            abort, self._held_drop = self._held_drop, None
            super().dropConnection(abort)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        fake = self.factory.fake
        fake.received_bytes += len(payload)
        if fake.keep_received:
            fake.received.append(payload)
        if isBinary:
            self.sendMessage(payload, isBinary=True)
            return
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            self.send_event("error", error={"type": "invalid_request_error", "code": "invalid_json", "message": "bad event"})
            return
        if self.call is not None:
            return self.call.on_event(self, kind, event)  # type: ignore[no-any-return]
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is None:
            self.send_event("error", error={"type": "invalid_request_error", "code": "unknown_event", "message": kind})
        else:
            handler(event)

    def on_test_echo(self, event: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(event).encode())

    def on_test_invalid_utf8(self, event: dict[str, Any]) -> None:
        self.sendMessage(b'{"type":"\xff\xfe"}')

    def on_test_stream(self, event: dict[str, Any]) -> None:
        chunk = base64.b64encode(b"\0" * int(event.get("chunk", 4096))).decode()
        message = json.dumps({"type": "response.output_audio.delta", "delta": chunk}).encode()
        AudioStream(self, message, int(event["bytes"])).start()

    def on_session_update(self, event: dict[str, Any]) -> None:
        self.send_event("session.updated", session=self.session())

    def on_conversation_item_create(self, event: dict[str, Any]) -> None:
        self.send_event("conversation.item.created", item=event.get("item", {}))

    def on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        pass

    def on_input_audio_buffer_commit(self, event: dict[str, Any]) -> None:
        fake = self.factory.fake
        item_id = f"item_{next(fake.ids)}"
        self.send_event("input_audio_buffer.committed", item_id=item_id)
        if not fake.transcript_after_response:
            self._transcribe(item_id)
        if fake.server_vad:
            # Server VAD: the end of speech starts a response nobody asked for.
            self._start_response(["audio"], True)
        if fake.transcript_after_response:
            self._transcribe(item_id)

    def _transcribe(self, item_id: str) -> None:
        fake = self.factory.fake
        if fake.transcription_usage is not None:
            usage = dict(fake.transcription_usage)
            fake.ledger.append(Billed("transcription", fake.transcription_model, usage, self.session_id))
            self.send_event(
                "conversation.item.input_audio_transcription.completed", item_id=item_id, transcript=fake.transcript, usage=usage
            )

    def on_conversation_item_delete(self, event: dict[str, Any]) -> None:
        self.send_event("conversation.item.deleted", item_id=event.get("item_id"))

    def start_response(self, modalities: tuple[str, ...] = ("text",)) -> None:
        """Start a response nobody asked for, now (as server VAD does at the end of speech)."""
        self._start_response(list(modalities), True)

    def on_response_create(self, event: dict[str, Any]) -> None:
        fake = self.factory.fake
        response = event.get("response") or {}
        modalities = response.get("output_modalities") or response.get("modalities") or ["text"]
        default_conversation = response.get("conversation", "auto") != "none"
        if default_conversation and any(entry[3] for entry in self._pending.values()):
            self.send_event("error", error={
                "type": "invalid_request_error", "code": "conversation_already_has_active_response",
                "message": "Conversation already has an active response in progress.", "event_id": event.get("event_id"),
            })
            return
        if fake.created_delay > 0:
            self.factory.reactor.callLater(fake.created_delay, self._start_response, modalities, default_conversation)
        else:
            self._start_response(modalities, default_conversation)

    def _start_response(self, modalities: list[str], default_conversation: bool) -> None:
        fake = self.factory.fake
        if self.state != self.STATE_OPEN:
            return
        number = next(fake.response_numbers)
        response_id = f"resp_{number}"
        self.send_event("response.created", response={"id": response_id, "status": "in_progress"})
        self.send_event("rate_limits.updated", rate_limits=[
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 400000, "remaining": 399000, "reset_seconds": 0.15},
        ])
        audio = "audio" in modalities
        self._send_output(response_id, audio)
        if fake.response_delay > 0:
            call = self.factory.reactor.callLater(fake.response_delay, self._finish_pending, response_id, "completed")
            self._pending[response_id] = (call, number, audio, default_conversation)
        else:
            self.finish_response(response_id, number, audio, "completed")

    def _send_output(self, response_id: str, audio: bool) -> None:
        """The response's text (fake.reply_deltas), as deltas; with fake.output_items, framed by its item and part events."""
        fake = self.factory.fake
        deltas = fake.replies.pop(0) if fake.replies else fake.reply_deltas
        text = "".join(deltas)
        kind = "output_audio_transcript" if audio and fake.output_items else "output_text"
        item_id = f"item_{next(fake.ids)}"
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        part = {"type": "audio", "transcript": text} if kind == "output_audio_transcript" else {"type": "text", "text": text}
        empty_part = {key: "" if key in ("text", "transcript") else value for key, value in part.items()}
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        if fake.output_items:
            self.send_event("response.output_item.added", response_id=response_id, output_index=0, item={**item, "status": "in_progress", "content": []})
            self.send_event("response.content_part.added", **where, part=empty_part)
        for piece in deltas:
            self.send_event(f"response.{kind}.delta", **where, delta=piece)
            if audio and fake.output_items:
                self.send_event("response.output_audio.delta", **where, delta="AAAA")
        if audio and not fake.output_items:
            self.send_event("response.output_audio.delta", response_id=response_id, delta="AAAA")
        if fake.output_items:
            self.send_event(f"response.{kind}.done", **where, **({"transcript": text} if audio else {"text": text}))
            self.send_event("response.content_part.done", **where, part=part)
            self.send_event("response.output_item.done", response_id=response_id, output_index=0, item=item)
            self._outputs[response_id] = [item]

    def on_response_cancel(self, event: dict[str, Any]) -> None:
        # As OpenAI: a response_id names the response; without one, the
        # default conversation's response is cancelled (not out-of-band ones).
        wanted = event.get("response_id")
        for response_id, (call, _, _, default_conversation) in list(self._pending.items()):
            if (response_id == wanted if wanted else default_conversation) and call.active():
                call.cancel()
                delay = self.factory.fake.cancel_delay
                if delay > 0:
                    self.factory.reactor.callLater(delay, self._finish_pending, response_id, "cancelled")
                else:
                    self._finish_pending(response_id, "cancelled")

    def _finish_pending(self, response_id: str, status: str) -> None:
        pending = self._pending.pop(response_id, None)
        if pending is not None and self.state == self.STATE_OPEN:
            _, number, audio, _ = pending
            self.finish_response(response_id, number, audio, status)

    def finish_response(self, response_id: str, number: int, audio: bool, status: str) -> None:
        fake = self.factory.fake
        held = fake.billing_held()
        if held is not None:  # stays mid-stream; a session closed meanwhile never bills it
            held.addCallback(lambda _: self.state == self.STATE_OPEN and self.finish_response(response_id, number, audio, status))
            return
        usage = response_usage(number, audio)
        fake.ledger.append(Billed("chat", self.model, usage, self.session_id))
        output = self._outputs.pop(response_id, None)
        self.send_event(
            "response.done",
            response={
                "object": "realtime.response", "id": response_id, "status": status, "usage": usage,
                **({"output": output} if output is not None else {}),
            },
        )


class FakeRealtimeFactory(WebSocketServerFactory):
    protocol = FakeRealtimeProtocol

    def __init__(self, fake: FakeState, reactor: Any) -> None:
        super().__init__()
        self.fake = fake
        self.reactor = reactor
        use_reactor_timers(self, reactor)
        # failByDrop=False: on a protocol error (invalid UTF-8, say) the fake sends its close
        # frame (1007...) before closing, as OpenAI does; Autobahn's default drops TCP unannounced.
        self.setProtocolOptions(maxMessagePayloadSize=64 * MiB, maxFramePayloadSize=64 * MiB, failByDrop=False)
