"""
Test doubles for agw and for agw's users, in the spirit of C{treq.testing}:
L{FakeOpenAI} is an in-process OpenAI upstream (Realtime over Autobahn) that
keeps a ledger of every token it billed; L{FakeGuardrailWebhook} is a
guardrail webhook (agentgateway's wire format) that rejects, masks or
misbehaves as a test says; L{PostgresServer} is a real
PostgreSQL on loopback for budgets shared through C{config.database}.
"""

from agw.testing._calls import SDP_ANSWER, FakeCall, FakeWebRTC
from agw.testing._fake import FakeOpenAI
from agw.testing._http import chat_usage
from agw.testing._sip import CALLER, DIALED, FakeSIP, WebhookDelivery
from agw.testing._postgres import PostgresServer, PostgresUnavailable
from agw.testing._state import REALTIME_MODEL, Billed, Handshake, HTTPRequest, Refusal, response_usage
from agw.testing._tls import TestCA
from agw.testing._webhook import FakeGuardrailWebhook, WebhookCall

__all__ = [
    "SDP_ANSWER", "FakeCall", "FakeWebRTC", "CALLER", "DIALED", "FakeSIP", "WebhookDelivery",
    "REALTIME_MODEL", "Billed", "FakeGuardrailWebhook", "FakeOpenAI", "HTTPRequest", "Handshake", "PostgresServer", "PostgresUnavailable", "Refusal", "TestCA", "chat_usage", "response_usage", "WebhookCall",
]
