"""
Sends on a leg that is already closing. Autobahn raises C{Disconnected}
when asked to send on a protocol that is not open; raised from a leg's
C{onClose} or C{dataReceived} it would skip Autobahn's connection
bookkeeping (Twisted drops the connection, and what was still to be read
or written with it). Each test makes agw want to send (cancel a response,
refuse one, answer a client) at the moment the leg it would send on is
closing, and checks that the session still ends as it should: close codes
passed on, usage counted, nothing logged as an error (trial fails a test
that logs one).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.realtime import RelayOptions
from agw.realtime._frames import CLOSE, TEXT
from tests.support import (
    listening_fake,
    open_client,
    recv_event,
    registry_samples,
    running_gateway,
    seed_config_text,
    token_sums,
    wait_until,
)
from tests.test_passthrough import RawClient, client_frame

# A client's response.create, and what its leaving looks like to the provider.
CREATE = json.dumps({"type": "response.create"})
BYE = (4000, "bye")
EXPIRED = (1001, "session_expired")


class ClosingLegTests(TestCase):
    """
    One response.create per hour on the route (the second one, or a response
    the server starts after the first, is refused), and room to act while a
    leg is closing: agw waits up to 5 s for its peers' close replies, and
    0.3 s for the usage of a response its client abandoned.
    """

    timeout = 30
    relay_options = RelayOptions(close_timeout=5.0, cancel_grace=0.3)

    @inlineCallbacks
    def setUp(self) -> Any:
        self.fake, fake_port = yield listening_fake(self)
        config = yaml.safe_load(seed_config_text(fake_port))
        config["binds"][0]["listeners"][0]["routes"][0]["policies"]["localRateLimit"] = [
            {"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "1h", "type": "requests"},
        ]
        self.gateway, _, self.port = yield running_gateway(self, yaml.safe_dump(config), relay_options=self.relay_options)
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    @inlineCallbacks
    def opened(self) -> Any:
        """A client with its session open; fires with (client, client leg, upstream leg, the fake's session)."""
        ws = yield deferToThread(open_client, self.url)
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        (client_leg,) = self.gateway.relays[0].sessions
        return ws, client_leg, client_leg.partner, self.fake.sessions[0]

    @inlineCallbacks
    def all_gone(self) -> Any:
        """Every leg of the relay is gone; nothing was logged as an error on the way."""
        yield wait_until(lambda: len(self.gateway.relays[0].connections) == 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def session_ends(self) -> dict[str, float]:
        """Ended sessions by the close code agw recorded for them."""
        return {
            dict(labels)["code"]: value for (name, labels), value in registry_samples(self.gateway.metrics.registry).items()
            if name == "agw_realtime_closes_total"
        }

    def assert_usage_counted(self) -> None:
        counted = token_sums(registry_samples(self.gateway.metrics.registry))
        billed = self.fake.billed()
        self.assertTrue(billed)
        self.assertEqual({k: v for k, v in counted.items() if v}, {k: float(v) for k, v in billed.items() if v})

    @inlineCallbacks
    def client_leaves_while_the_provider_closes(self, ws: Any, client_leg: Any, upstream: Any, provider: Any) -> Any:
        """
        The provider closes the session (1001) and stops reading, so agw's
        upstream leg stays in the close handshake; meanwhile the client leaves
        with a response to cancel.
        """
        provider.transport.pauseProducing()
        provider.close(*EXPIRED)
        yield wait_until(lambda: upstream.state == upstream.STATE_CLOSING)
        self.assertTrue(client_leg.session.awaiting_usage)
        yield deferToThread(ws.close, *BYE)  # agw must cancel now, on a leg that is closing
        provider.transport.resumeProducing()
        yield self.all_gone()
        self.assertEqual(self.fake.closes, [EXPIRED])
        self.assertEqual(self.session_ends(), {"4xxx": 1.0})  # the session ended with the client's code

    @inlineCallbacks
    def test_cancel_by_id_while_the_provider_closes(self) -> Any:
        """The client leaves mid-response as the provider ends the session: the drain's cancel (by id) is not sent."""
        self.fake.response_delay = 30.0
        ws, client_leg, upstream, provider = yield self.opened()

        def ask() -> None:
            ws.send(CREATE)
            while recv_event(ws)["type"] != "response.created":
                pass

        yield deferToThread(ask)
        yield self.client_leaves_while_the_provider_closes(ws, client_leg, upstream, provider)

    @inlineCallbacks
    def test_bare_cancel_while_the_provider_closes(self) -> Any:
        """The same with a response asked for but not acknowledged yet: the drain's bare cancel is not sent."""
        ws, client_leg, upstream, provider = yield self.opened()
        provider.transport.pauseProducing()  # the provider never reads the request
        yield deferToThread(ws.send, CREATE)
        yield wait_until(lambda: client_leg.session.awaiting_usage)
        yield self.client_leaves_while_the_provider_closes(ws, client_leg, upstream, provider)

    @inlineCallbacks
    def test_response_acknowledged_after_the_drain_closed_the_upstream_leg(self) -> Any:
        """
        The client leaves before the provider acknowledges its response; the
        cancel grace runs out and agw closes the upstream leg; only then does
        the provider start the response: it cannot be cancelled any more,
        and its usage is still counted.
        """
        ws, client_leg, upstream, provider = yield self.opened()
        provider.transport.pauseProducing()
        yield deferToThread(ws.send, CREATE)
        yield wait_until(lambda: client_leg.session.awaiting_usage)
        yield deferToThread(ws.close, *BYE)
        yield wait_until(lambda: upstream.state == upstream.STATE_CLOSING)  # the grace ran out
        provider.transport.resumeProducing()  # the response starts (and ends) before the provider reads agw's close
        yield self.all_gone()
        self.assertEqual(self.fake.closes, [BYE])
        self.assert_usage_counted()

    @inlineCallbacks
    def test_server_response_refused_while_the_upstream_leg_closes(self) -> Any:
        """
        The rate limit is spent; the client leaves and agw closes the upstream
        leg; before the provider reads agw's close frame its server VAD
        starts a response, which agw would cancel: it cannot, and the
        response's usage is still counted.
        """
        ws, client_leg, upstream, provider = yield self.opened()

        def respond() -> None:
            ws.send(CREATE)
            while recv_event(ws)["type"] != "response.done":
                pass

        yield deferToThread(respond)  # spends the route's one request
        provider.transport.pauseProducing()
        yield deferToThread(ws.close, *BYE)
        yield wait_until(lambda: upstream.state == upstream.STATE_CLOSING)
        provider.start_response()  # agw reads response.created while its upstream leg is closing
        provider.transport.resumeProducing()
        yield self.all_gone()
        self.assertEqual(self.fake.closes, [BYE])
        self.assert_usage_counted()

    @inlineCallbacks
    def test_refusal_while_the_client_leg_closes(self) -> Any:
        """
        The provider ends the session and agw closes the client's leg; the
        client, not reading yet, sends a response.create the rate limit
        refuses: agw cannot tell it why any more, and the client still gets
        the provider's close code.
        """
        raw = yield deferToThread(RawClient, self.port)
        self.addCleanup(raw.close)
        yield deferToThread(raw.next_event, "session.created")
        yield deferToThread(raw.send, client_frame(TEXT, CREATE.encode()))
        yield deferToThread(raw.next_event, "response.done")  # spends the route's one request
        (client_leg,) = self.gateway.relays[0].sessions
        self.fake.sessions[0].close(*EXPIRED)
        yield wait_until(lambda: client_leg.state == client_leg.STATE_CLOSING)
        # The refused request and the client's close reply arrive in one read.
        reply = struct.pack("!H", EXPIRED[0]) + EXPIRED[1].encode()
        late = client_frame(TEXT, b'{"type":"response.create","event_id":"late"}')
        yield deferToThread(raw.send, late + client_frame(CLOSE, reply))
        close = yield deferToThread(raw.next_frame)
        self.assertEqual((close.opcode, close.payload()), (CLOSE, reply))
        yield self.all_gone()
        self.assertEqual(self.session_ends(), {"1001": 1.0})  # not 1006: the close reply was read



class MessageRelayClosingLegTests(ClosingLegTests):
    """The same with the whole-message path (C{--message-relay})."""

    relay_options = RelayOptions(close_timeout=5.0, cancel_grace=0.3, pass_through=False)
