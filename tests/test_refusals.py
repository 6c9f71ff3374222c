"""
agw's own refusals, before any route's forwarder sees the request (a
target that is not a path, no route, a body over a limit, too many bodies
held, a request twisted.web cannot parse): each is an OpenAI-shaped error,
and each is counted in C{agentgateway_requests_total} with its status
(C{route=""}: no route was chosen).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from agw.http import HTTPOptions
from tests.support import on_twisted_web, registry_samples, wait_until
from tests.wire_support import gateway_to, raw_request, read_response, status_and_error


def under_v1_only(config: dict) -> None:
    """The seed config's catch-all route made a /v1 route: other paths have no route."""
    config["binds"][0]["listeners"][0]["routes"][1]["matches"] = [{"path": {"pathPrefix": "/v1"}}]


def twisted_refused(port: int, data: bytes) -> tuple[bytes, bytes, bool]:
    """What agw answers to a request twisted.web cannot parse (its answer ends at the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_response(sock)


class RefusalTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.upstream, self.port, self.gateway, self.service = yield gateway_to(
            self, lambda request: (b"", True), under_v1_only,
            http_options=HTTPOptions(max_request_body=1000, max_buffered_bodies=1500),
        )

    def refused(self) -> dict[str, float]:
        """agentgateway_requests_total without a route, by status."""
        counted: dict[str, float] = {}
        for (name, labels), value in registry_samples(self.gateway.metrics.registry).items():
            label = dict(labels)
            if name == "agentgateway_requests_total" and label["route"] == "":
                counted[label["status"]] = counted.get(label["status"], 0) + value
        return counted

    def send(self, data: bytes) -> Any:
        return deferToThread(raw_request, self.port, data)

    @inlineCallbacks
    def test_agws_own_refusals_are_counted(self) -> Any:
        answers = []
        answers.append((yield self.send(b"GET /elsewhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")))
        answers.append((yield self.send(b"GET /v1/a/../b HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")))
        answers.append((yield self.send(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")))
        answers.append((yield self.send(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n")))
        self.assertEqual([status_and_error(answer) for answer in answers], [
            (404, "route_not_found"), (400, "invalid_request_target"), (400, "invalid_request_target"),
            (413, "request_too_large"),
        ])
        self.assertEqual(self.refused(), {"404": 1, "400": 2, "413": 1})
        self.assertEqual(self.upstream.requests, [])

    @inlineCallbacks
    def test_too_many_uploads_is_counted(self) -> Any:
        budget = self.service.site_of(0).body_budget
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as holding:
            holding.sendall(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + b"x" * 999)
            yield wait_until(lambda: budget.held >= 999)
            answer = yield self.send(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + b"y" * 999)
        self.assertEqual(status_and_error(answer), (503, "too_many_uploads"))
        self.assertEqual(self.refused(), {"503": 1})

    @inlineCallbacks
    def test_what_twisted_cannot_parse_is_an_openai_error(self) -> Any:
        for data in (
            b"NOT A REQUEST LINE AT ALL\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost gw\r\n\r\n",  # a header line without a colon
            b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: many\r\n\r\n",
        ):
            answer = yield deferToThread(twisted_refused, self.port, data)
            self.assertEqual(status_and_error(answer), (400, "invalid_request"), answer)
        self.assertEqual(self.refused(), {"400": 3})


class ProbeListenerBodyTests(TestCase):
    """The stats and readiness listeners (on every interface by default) take no request body."""

    @inlineCallbacks
    def setUp(self) -> Any:
        _, _, _, service = yield gateway_to(self, lambda request: (b"", True))
        self.ports = {"stats": service.stats.port.getHost().port, "readiness": service.readiness.port.getHost().port}

    @inlineCallbacks
    def test_a_body_is_refused_before_it_is_read(self) -> Any:
        for name, path in (("stats", b"/metrics"), ("readiness", b"/healthz/ready")):
            announced = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n" % path
            answer = yield deferToThread(raw_request, self.ports[name], announced)
            self.assertEqual(status_and_error(answer), (413, "request_too_large"), name)
            chunked = b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n" % path
            answer = yield deferToThread(raw_request, self.ports[name], chunked)
            self.assertEqual(status_and_error(answer), (413, "request_too_large"), name)

    @inlineCallbacks
    def test_their_answers_stand(self) -> Any:
        for name, path in (("stats", b"/metrics"), ("readiness", b"/healthz/ready")):
            head, _, _ = yield deferToThread(raw_request, self.ports[name], b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), (name, head))


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebRefusalTests = on_twisted_web(RefusalTests)
