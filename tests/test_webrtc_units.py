"""
The WebRTC pieces on their own: agw's client secrets (CallTokens), the
bodies of the WebRTC endpoints, which route type serves them, the
realtimeCalls config, and the call supervisor's back-off and fail-closed
ending driven by a Clock.
"""

from __future__ import annotations

from typing import Any

import yaml
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from agw.calls import BadForm, CallSupervisor, call_form, call_id_of, parse_call_form, secret_seconds
from agw.calls._forms import scrubbed_session, without_provider_secrets
from agw.config import ConfigError, FailureMode, RealtimeCalls, RouteType, Secret, parse_config
from agw.decisions import TOKEN_PREFIX, CallTokens, Grant, KeyRefused, is_token, new_token_key
from agw.metering import SIDEBAND_LOST, CallRecord, GatewayMetrics, RealtimeSession, RouteLabels
from agw.realtime import UpstreamRefused
from agw.routing import route_type_for, webrtc_endpoint
from tests.support import seed_config_text

ROUTE = ("3000", "bind/3000", "listener0", "route0", "")


def grant(expires_at: float = 100.0, route: tuple[str, ...] = ROUTE) -> Grant:
    return Grant(route, "digest", "gpt-realtime", Secret("ek_provider"), expires_at)


class CallTokensTests(SynchronousTestCase):
    def test_mint_redeem_expire(self) -> None:
        now = [0.0]
        tokens = CallTokens(lambda: now[0])
        token = tokens.mint(grant())
        self.assertTrue(is_token(token))
        self.assertNotIn("ek_provider", token)
        self.assertNotIn("digest", token)
        redeemed = tokens.redeem(token, ROUTE)
        self.assertEqual(redeemed, grant())
        self.assertNotIn("ek_provider", repr(redeemed))  # never in a log line by accident
        with self.assertRaises(KeyRefused) as other_route:
            tokens.redeem(token, ("3000", "bind/3000", "listener0", "route1", ""))
        self.assertEqual(other_route.exception.status, 401)
        for bad in (token + "x", token[:-1], "agw_ek_", "agw_ek_!!!", TOKEN_PREFIX + "A" * 5000):
            with self.assertRaises(KeyRefused, msg=bad[:20]):
                tokens.redeem(bad, ROUTE)
        now[0] = 100.0
        with self.assertRaises(KeyRefused) as expired:
            tokens.redeem(token, ROUTE)
        self.assertEqual((expired.exception.status, expired.exception.code), (401, "expired_client_secret"))

    def test_sealed_with_the_key(self) -> None:
        """Any holder of the key redeems a token (every worker of a pool); no one else can, nor read or alter it."""
        key = new_token_key()
        token = CallTokens(lambda: 0.0, key).mint(grant())
        self.assertEqual(CallTokens(lambda: 0.0, key).redeem(token, ROUTE), grant())  # another process, the same key
        with self.assertRaises(KeyRefused) as other_key:
            CallTokens(lambda: 0.0, new_token_key()).redeem(token, ROUTE)
        self.assertEqual((other_key.exception.status, other_key.exception.code), (401, "invalid_api_key"))
        body = token[len(TOKEN_PREFIX):]
        for position in (0, len(body) // 2, len(body) - 2):  # any bit changed: refused, not a different grant
            flipped = body[:position] + ("A" if body[position] != "A" else "B") + body[position + 1:]
            with self.assertRaises(KeyRefused):
                CallTokens(lambda: 0.0, key).redeem(TOKEN_PREFIX + flipped, ROUTE)
        self.assertNotEqual(CallTokens(lambda: 0.0, key).mint(grant()), token)  # a fresh nonce each time
        self.assertLess(len(token), 400)  # fits a header and a WebSocket subprotocol
        self.assertRegex(token, r"^agw_ek_[A-Za-z0-9_-]+$")
        with self.assertRaises(ValueError):
            CallTokens(lambda: 0.0, b"short")


class FormTests(SynchronousTestCase):
    def test_call_form_round_trip(self) -> None:
        body, content_type = call_form("v=0\r\n", {"type": "realtime", "model": "m"})
        self.assertEqual(parse_call_form(body, content_type), ("v=0\r\n", {"type": "realtime", "model": "m"}))

    def test_bad_forms(self) -> None:
        body, content_type = call_form("v=0\r\n", {"model": "m"})
        for bad_body, bad_type in (
            (body, "multipart/form-data; boundary=other"),
            (body.replace(b'name="sdp"', b'name="offer"'), content_type),
            (body.replace(b'{"model": "m"}', b"[1]"), content_type),
            (body.replace(b'{"model": "m"}', b"{nope"), content_type),
        ):
            with self.assertRaises(BadForm):
                parse_call_form(bad_body, bad_type)

    def test_secret_seconds(self) -> None:
        self.assertEqual(secret_seconds(None, 600), 600)
        self.assertEqual(secret_seconds({"anchor": "created_at", "seconds": 60}, 600), 60)
        self.assertEqual(secret_seconds({"seconds": 7200}, 600), 600)
        for bad in ({"seconds": 9}, {"seconds": 7201}, {"seconds": "60"}, {"seconds": True}, {"anchor": "now"}, [], {"x": 1}):
            with self.assertRaises(BadForm):
                secret_seconds(bad, 600)

    def test_call_id_and_session(self) -> None:
        self.assertEqual(call_id_of("/v1/realtime/calls/rtc_u1_9c65"), "rtc_u1_9c65")
        self.assertEqual(call_id_of("https://api.openai.com/v1/realtime/calls/rtc_1?x=y"), "rtc_1")
        for bad in (None, "", "/v1/realtime/calls/..", "/v1/realtime/calls/a%2Fb"):
            self.assertIsNone(call_id_of(bad))
        self.assertEqual(scrubbed_session({"model": "m", "client_secret": {"value": "ek_1"}}, "ek_1"), {"model": "m"})
        self.assertIsNone(scrubbed_session({"model": "m", "note": "ek_1"}, "ek_1"))
        self.assertEqual(
            without_provider_secrets({"message": "Invalid key: ek_68af3***a1b2.", "code": "invalid_api_key", "n": [1, "ek_x"]}),
            {"message": "Invalid key: ek_<redacted>", "code": "invalid_api_key", "n": [1, "ek_<redacted>"]},
        )


class RouteTypeTests(SynchronousTestCase):
    def test_webrtc_endpoints_belong_to_the_realtime_type(self) -> None:
        routes = (("/v1/realtime", RouteType.REALTIME), ("*", RouteType.PASSTHROUGH))
        for path in (
            "/v1/realtime/client_secrets", "/v1/realtime/calls", "/v1/realtime/calls/rtc_1/hangup", "/v1/realtime/webhook",
            "/v1/realtime/calls/rtc_1/accept", "/v1/realtime/calls/rtc_1/reject", "/v1/realtime/calls/rtc_1/refer",
        ):
            self.assertIs(route_type_for(path, routes), RouteType.REALTIME, path)
        self.assertIs(route_type_for("/v1/realtime/sessions", routes), RouteType.PASSTHROUGH)
        self.assertIs(route_type_for("/v1/chat/calls", routes), RouteType.PASSTHROUGH)
        explicit = routes + (("/v1/realtime/calls", RouteType.PASSTHROUGH),)  # the operator's longer key wins
        self.assertIs(route_type_for("/v1/realtime/calls", explicit), RouteType.PASSTHROUGH)
        endpoint = webrtc_endpoint("/v1/realtime/calls/rtc_1/hangup")
        self.assertEqual((endpoint.name, endpoint.realtime_path, endpoint.call_id), ("hangup", "/v1/realtime", "rtc_1"))
        endpoint = webrtc_endpoint("/v1/realtime/webhook")
        self.assertEqual((endpoint.name, endpoint.realtime_path, endpoint.call_id), ("webhook", "/v1/realtime", None))
        self.assertIsNone(webrtc_endpoint("/v1/realtime/calls/rtc_1/transfer"))


class ConfigTests(SynchronousTestCase):
    def load(self, calls: Any) -> Any:
        data = yaml.safe_load(seed_config_text(1234))
        data["binds"][0]["listeners"][0]["routes"][0]["policies"]["realtimeCalls"] = calls
        return parse_config(yaml.safe_dump(data), {"OPENAI_API_KEY": "k"}).binds[0].listeners[0].routes[0].policies.realtime_calls

    def test_defaults_and_values(self) -> None:
        self.assertEqual(self.load(None), RealtimeCalls())
        loaded = self.load({"maxSecretLifetime": "1m", "sideband": {"reconnectAttempts": 0, "reconnectDelay": "100ms", "failureMode": "failOpen"}})
        self.assertEqual(loaded, RealtimeCalls(60, 0, 0.1, 5.0, FailureMode.FAIL_OPEN))
        self.assertEqual([RealtimeCalls().backoff(n) for n in (1, 2, 3, 6, 7)], [0.25, 0.5, 1.0, 5.0, 5.0])

    def test_refused(self) -> None:
        for calls, where in (
            ({"maxSecretLifetime": "3h"}, "maxSecretLifetime"),
            ({"maxSecretLifetime": "1500ms"}, "maxSecretLifetime"),
            ({"sideband": {"reconnectDelay": "2s", "maxReconnectDelay": "1s"}}, "maxReconnectDelay"),
            ({"sideband": {"failureMode": "close"}}, "failureMode"),
            ({"sideband": {"reconnectAttempts": "3"}}, "reconnectAttempts"),
            ({"sideband": {"retries": 3}}, "retries"),
        ):
            with self.assertRaises(ConfigError) as refused:
                self.load(calls)
            self.assertIn(f"realtimeCalls.{'sideband.' if where not in ('maxSecretLifetime',) else ''}{where}", str(refused.exception))


class FakeLeg:
    """A sideband leg as the supervisor sees it."""

    def __init__(self) -> None:
        self.control: Any = None
        self.cancelled: list[str | None] = []
        self.closed: tuple[int, str] | None = None

    def cancel(self, response_id: str | None) -> bool:
        self.cancelled.append(response_id)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.control.sideband_closed(self, True, code, reason)


class SupervisorClockTests(SynchronousTestCase):
    """The supervisor's back-off and fail-closed ending, driven by a Clock (no sockets)."""

    def supervisor(self, attempts: list[Deferred[Any]], policy: RealtimeCalls) -> tuple[CallSupervisor, list[float], Clock]:
        clock = Clock()
        metrics = GatewayMetrics()
        route = RouteLabels.of(3000, "listener0", "route0")
        session = RealtimeSession(metrics, route, "gpt-realtime", clock.seconds, transport="webrtc")
        record = CallRecord(metrics.calls, route, metrics.anonymous, "rtc_1", clock.seconds)
        tries: list[float] = []
        hang_ups: list[float] = []

        def open_leg() -> Deferred[Any]:
            tries.append(clock.seconds())
            return attempts.pop(0)

        async def hang_up() -> int:
            hang_ups.append(clock.seconds())
            return 200

        supervisor = CallSupervisor("rtc_1", None, session, record, open_leg, hang_up, policy, 5.0, clock)
        supervisor.hang_ups = hang_ups  # type: ignore[attr-defined]
        self.metrics = metrics
        return supervisor, tries, clock

    def test_reconnect_back_off_then_fail_closed(self) -> None:
        leg = FakeLeg()
        refused = UpstreamRefused(503, "busy", [], b"")
        attempts = [succeed(leg), fail(refused), fail(refused), fail(refused)]
        policy = RealtimeCalls(reconnect_attempts=2, reconnect_delay=1.0, max_reconnect_delay=1.5)
        supervisor, tries, clock = self.supervisor(attempts, policy)
        started = supervisor.start()
        self.assertIsNone(self.successResultOf(started))
        self.assertIs(leg.control, supervisor)
        supervisor.sideband_closed(leg, False, 1006, None)  # dropped
        self.assertEqual(tries, [0.0, 0.0])  # at once, then after the back-off
        clock.advance(1.0)
        self.assertEqual(tries, [0.0, 0.0, 1.0])
        clock.advance(1.5)  # capped at maxReconnectDelay
        self.assertEqual(tries, [0.0, 0.0, 1.0, 2.5])
        self.assertEqual(supervisor.hang_ups, [2.5])  # type: ignore[attr-defined]
        self.assertTrue(supervisor.finished.called)
        self.assertEqual(supervisor.end, SIDEBAND_LOST)
        self.assertEqual(supervisor.record.gaps, 1)

    def test_fail_open_keeps_the_call(self) -> None:
        leg = FakeLeg()
        policy = RealtimeCalls(reconnect_attempts=0, failure_mode=FailureMode.FAIL_OPEN)
        supervisor, tries, clock = self.supervisor([succeed(leg), fail(UpstreamRefused(500, "", [], b""))], policy)
        supervisor.start()
        supervisor.sideband_closed(leg, False, 1006, None)
        self.assertEqual(supervisor.hang_ups, [])  # type: ignore[attr-defined]
        self.assertTrue(supervisor.finished.called)

    def test_gone_at_the_provider(self) -> None:
        leg = FakeLeg()
        supervisor, tries, clock = self.supervisor([succeed(leg), fail(UpstreamRefused(404, "", [], b""))], RealtimeCalls())
        supervisor.start()
        supervisor.sideband_closed(leg, True, 1000, "call ended")
        self.assertTrue(supervisor.finished.called)
        self.assertEqual((supervisor.end, supervisor.record.gaps), ("provider", 0))
