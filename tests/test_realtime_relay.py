"""
The Realtime relay's contract with raw WebSocket clients (the websockets
library, in threads): close codes both ways, refusals, subprotocols,
message fidelity.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from agw.config import MiB
from agw.realtime import RelayOptions
from tests.support import (
    BACKEND_KEY,
    CLIENT_KEY,
    GatewayTestCase,
    handshake_status,
    on_twisted_web,
    open_client,
    recv_event,
    token_sums,
    wait_closed,
    wait_until,
)


class CloseCodeTests(GatewayTestCase):
    @property
    def url(self) -> str:
        return f"{self.ws_base}/realtime?model=gpt-realtime"

    @inlineCallbacks
    def opened(self) -> Any:
        ws = yield deferToThread(open_client, self.url)
        self.addCleanup(deferToThread, ws.close)
        created = yield deferToThread(recv_event, ws)
        self.assertEqual(created["type"], "session.created")
        return ws

    @inlineCallbacks
    def test_upstream_code_and_reason_reach_client(self) -> Any:
        ws = yield self.opened()
        gauge = self.gateway.metrics.realtime.sessions.labels("0", "bind/0", "listener0", "route0", "", "")
        self.assertEqual(gauge._value.get(), 1)
        self.fake.sessions[0].close(1001, "session_expired")
        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (1001, "session_expired"))
        yield wait_until(lambda: gauge._value.get() == 0)

    @inlineCallbacks
    def test_client_code_and_reason_reach_upstream(self) -> Any:
        ws = yield self.opened()
        yield deferToThread(ws.close, 4001, "user hung up")
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes, [(4001, "user hung up")])

    @inlineCallbacks
    def test_close_codes_are_counted_bounded(self) -> Any:
        """Application codes (3000-4999) are counted by range: a client cannot make a series per code."""
        for code in (1000, 4001, 4999, 3123):
            ws = yield self.opened()
            yield deferToThread(ws.close, code, "bye")
        yield wait_until(lambda: len(self.fake.closes) == 4)
        yield wait_until(lambda: self.gateway.metrics.realtime.sessions.labels("0", "bind/0", "listener0", "route0", "", "")._value.get() == 0)
        metrics = yield self.scrape()
        closes = {dict(labels)["code"]: value for (name, labels), value in metrics.items() if name == "agw_realtime_closes_total"}
        self.assertEqual(closes, {"1000": 1.0, "4xxx": 2.0, "3xxx": 1.0})

    @inlineCallbacks
    def test_provider_close_frame_then_tcp_gone_passes_its_code(self) -> Any:
        """A provider that says why and hangs up without waiting for the reply: the client still learns why."""
        ws = yield self.opened()
        session = self.fake.sessions[0]
        session.sendCloseFrame(code=4002, reasonUtf8=b"going away now", isReply=False)
        session.transport.loseConnection()  # the close frame is written, then TCP ends: no handshake
        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (4002, "going away now"))

    @inlineCallbacks
    def test_upstream_vanishing_closes_client_with_1011(self) -> Any:
        ws = yield self.opened()
        self.fake.sessions[0].transport.abortConnection()
        code, _ = yield deferToThread(wait_closed, ws)
        self.assertEqual(code, 1011)

    def dropped(self, direction: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "agw_realtime_dropped_messages_total",
            {"bind": "0", "gateway": "bind/0", "listener": "listener0", "route": "route0", "route_rule": "", "direction": direction},
        )
        return value or 0.0

    @inlineCallbacks
    def test_client_streaming_while_provider_ends_session_gets_1001(self) -> Any:
        """Audio that arrives while the provider's close is under way is dropped (and counted), not a 1006."""
        ws = yield self.opened()
        self.fake.hold_tcp = True
        (session,) = self.fake.sessions
        session.close(1001, "session_expired")
        (client_leg,) = self.gateway.relays[0].sessions
        upstream_leg = client_leg._upstream
        yield wait_until(lambda: upstream_leg.state == upstream_leg.STATE_CLOSING)
        append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 100})
        yield deferToThread(lambda: [ws.send(append) for _ in range(5)])
        yield wait_until(lambda: self.dropped("client_to_upstream") == 5)
        session.release()
        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (1001, "session_expired"))
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_close_without_code_is_relayed_without_code(self) -> Any:
        ws = yield self.opened()
        self.fake.sessions[0].close(None)
        code, _ = yield deferToThread(wait_closed, ws)
        self.assertEqual(code, 1005)  # websockets' name for "no status code in the close frame"

        other = yield self.opened()
        yield deferToThread(other.socket.sendall, b"\x88\x80\x00\x00\x00\x00")  # a masked close frame without a code
        yield wait_until(lambda: len(self.fake.closes) == 2)
        self.assertEqual(self.fake.closes[1], (None, None))

    @inlineCallbacks
    def test_client_vanishing_closes_upstream(self) -> Any:
        ws = yield self.opened()
        ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just ends
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)
        yield wait_until(lambda: not any(r.sessions for r in self.gateway.relays))


class RefusalTests(GatewayTestCase):
    relay_options = RelayOptions(handshake_timeout=0.5)

    @property
    def url(self) -> str:
        return f"{self.ws_base}/realtime?model=gpt-realtime"

    @inlineCallbacks
    def test_upstream_status_and_body_reach_client(self) -> Any:
        body = json.dumps({"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}).encode()
        self.fake.refuse(401, body)
        status, received = yield deferToThread(handshake_status, self.url)
        self.assertEqual((status, received), (401, body))

    @inlineCallbacks
    def test_every_refusal_status_passes_through(self) -> Any:
        for status in (403, 404, 429, 500, 503):
            body = json.dumps({"error": {"code": f"status_{status}"}}).encode()
            self.fake.refuse(status, body)
            received = yield deferToThread(handshake_status, self.url)
            self.assertEqual(received, (status, body))
        metrics = yield self.scrape()
        refusals = {dict(labels)["status"]: value for (name, labels), value in metrics.items() if name == "agw_realtime_refusals_total"}
        self.assertEqual(refusals, {"403": 1.0, "404": 1.0, "429": 1.0, "500": 1.0, "503": 1.0})

    @inlineCallbacks
    def test_chunked_refusal_is_relayed_whole_and_dechunked(self) -> Any:
        body = json.dumps({"error": {"message": "Rate limit reached " + "x" * 300, "code": "rate_limit_exceeded"}}).encode()
        self.fake.refuse(429, body, chunked=True)
        received = yield deferToThread(handshake_status, self.url)
        self.assertEqual(received, (429, body))

    @inlineCallbacks
    def test_silent_upstream_is_504(self) -> Any:
        self.fake.hang()
        status, body = yield deferToThread(handshake_status, self.url)
        self.assertEqual(status, 504)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_timeout")

    @inlineCallbacks
    def test_unreachable_upstream_is_502(self) -> Any:
        yield self.fake_port.stopListening()
        status, body = yield deferToThread(handshake_status, self.url)
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_unreachable")


class SubprotocolTests(GatewayTestCase):
    @inlineCallbacks
    def test_browser_credentials_not_forwarded(self) -> Any:
        """`realtime` is echoed; key, organization and project tokens stay at the gateway."""
        protocols = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}", "openai-organization.org-1", "openai-project.proj-1"]
        ws = yield deferToThread(
            open_client, f"{self.ws_base}/realtime?model=gpt-realtime", subprotocols=protocols, additional_headers={}
        )
        self.addCleanup(deferToThread, ws.close)
        self.assertEqual(ws.subprotocol, "realtime")
        (handshake,) = self.fake.handshakes
        self.assertEqual(handshake.protocols, ())
        self.assertEqual(handshake.headers["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertNotIn(CLIENT_KEY, repr(handshake))


class MessageTests(GatewayTestCase):
    @inlineCallbacks
    def test_text_and_binary_in_order(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)

        def exchange() -> list[Any]:
            sent = []
            for i in range(20):
                if i % 3 == 0:
                    message: Any = bytes([i]) * (i + 1)
                else:
                    message = json.dumps({"type": "test.echo", "n": i})
                ws.send(message)
                sent.append(message)
            return [ws.recv(timeout=10) for _ in sent] == sent

        same = yield deferToThread(exchange)
        self.assertTrue(same)

    @inlineCallbacks
    def test_fifteen_mib_message_relayed_whole(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        audio = "A" * (15 * MiB)
        yield deferToThread(ws.send, json.dumps({"type": "test.echo", "audio": audio}))
        echoed = yield deferToThread(recv_event, ws)
        self.assertEqual(len(echoed["audio"]), len(audio))

    @inlineCallbacks
    def test_oversized_message_closes_with_1009(self) -> Any:
        ws = yield deferToThread(open_client, f"{self.ws_base}/realtime?model=m")
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)

        def send_too_much() -> tuple[int | None, str | None]:
            try:
                ws.send(b"x" * (16 * MiB + 1))
            except ConnectionClosed as e:
                return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, None)
            return wait_closed(ws)

        code, _ = yield deferToThread(send_too_much)
        self.assertEqual(code, 1009)
        yield wait_until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][0], 1011)


class CompressionTests(GatewayTestCase):
    relay_options = RelayOptions(client_deflate="small")

    @inlineCallbacks
    def test_compressed_client_leg_still_counted(self) -> Any:
        """A client offering permessage-deflate: upstream sees no offer, every token is counted."""

        def session() -> str | None:
            with connect(
                f"{self.ws_base}/realtime?model=gpt-realtime", compression="deflate", max_size=None,
                additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            ) as ws:
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
                recv_event(ws)
                for _ in range(3):
                    ws.send(json.dumps({"type": "response.create"}))
                    while recv_event(ws)["type"] != "response.done":
                        pass
                return extensions

        negotiated = yield deferToThread(session)
        self.assertIn("permessage-deflate", negotiated or "")
        (handshake,) = self.fake.handshakes
        self.assertNotIn("sec-websocket-extensions", handshake.headers)
        samples = yield self.scrape()
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))


# The same tests with the handshake through twisted.web (--legacy-http): the path embedders' sites take.
TwistedWebCloseCodeTests = on_twisted_web(CloseCodeTests)
TwistedWebRefusalTests = on_twisted_web(RefusalTests)
TwistedWebSubprotocolTests = on_twisted_web(SubprotocolTests)
