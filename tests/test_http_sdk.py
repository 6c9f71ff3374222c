"""
HTTP route types through the seed config, driven by the openai SDK (in
threads) against the fake upstream: content intact, every token counted.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import openai
import treq
from openai import OpenAI
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.web.client import FileBodyProducer

from agw.http import HTTPOptions
from tests.support import BACKEND_KEY, CLIENT_KEY, GatewayTestCase, on_twisted_web, token_sums, wait_until


class HTTPTestCase(GatewayTestCase):
    def sdk(self, call: Any) -> Deferred[Any]:
        """Run C{call(client)} in a thread with an SDK client that is closed afterwards."""

        def run() -> Any:
            with OpenAI(api_key=CLIENT_KEY, base_url=self.http_base, max_retries=0) as client:
                return call(client)

        return deferToThread(run)

    def assert_ledger_on_metrics(self, samples: dict) -> None:
        self.assertEqual({k: float(v) for k, v in self.fake.billed().items()}, token_sums(samples))


class CompletionsTests(HTTPTestCase):
    @inlineCallbacks
    def test_json_completion(self) -> Any:
        completion = yield self.sdk(
            lambda c: c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        )
        self.assertEqual(completion.choices[0].message.content, "Hello!")
        seen = self.fake.http_requests[0]
        self.assertEqual(seen.json["model"], "gpt-4")  # the seed's provider.openAI.model
        self.assertEqual(seen.headers["authorization"], f"Bearer {BACKEND_KEY}")
        self.assertEqual(completion.model, "gpt-4-2025-01-01")
        samples = yield self.scrape()
        self.assert_ledger_on_metrics(samples)
        self.assertEqual(completion.usage.prompt_tokens, self.fake.billed()[("chat", "gpt-4-2025-01-01", "input")])
        labels = dict(next(l for n, l in samples if n == "agentgateway_gen_ai_client_token_usage_count"))
        self.assertEqual((labels["gen_ai_request_model"], labels["route"]), ("gpt-4", "route1"))
        self.assertEqual(samples[("agentgateway_requests_total", frozenset({
            "bind": "0", "gateway": "bind/0", "listener": "listener0", "route": "route1", "route_rule": "",
            "method": "POST", "status": "200"}.items()))], 1.0)

    @inlineCallbacks
    def test_streaming_completion(self) -> Any:
        def stream(client: OpenAI) -> str:
            chunks = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        text = yield self.sdk(stream)
        self.assertEqual(text, "Hello!")
        self.assertEqual(self.fake.http_requests[0].json["stream_options"], {"include_usage": True})
        samples = yield self.scrape()
        self.assert_ledger_on_metrics(samples)
        self.assertTrue(any(n == "agentgateway_gen_ai_server_time_to_first_token_count" for n, _ in samples))

    @inlineCallbacks
    def test_stream_is_not_buffered(self) -> Any:
        """The first chunk reaches the client while upstream still holds the rest."""
        gate: Deferred[None] = Deferred()
        self.fake.stream_gate = gate
        client = OpenAI(api_key=CLIENT_KEY, base_url=self.http_base, max_retries=0)
        self.addCleanup(deferToThread, client.close)
        stream = yield deferToThread(
            lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        chunks = iter(stream)
        first = yield deferToThread(next, chunks)
        self.assertEqual(first.choices[0].delta.content, "Hel")
        self.assertFalse(gate.called)
        gate.callback(None)
        rest = yield deferToThread(list, chunks)
        self.assertTrue(rest)

    @inlineCallbacks
    def test_usage_the_client_did_not_ask_for_is_counted_and_hidden(self) -> Any:
        """
        agw asks for stream usage whatever the client said; a client that did
        not ask for it (false, or absent) gets the stream byte for byte as
        the provider sends it without usage.
        """
        for options in ({"stream_options": {"include_usage": False}}, {}):
            request = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True, **options}
            direct = yield treq.post(f"http://127.0.0.1:{self.upstream_port}/v1/chat/completions", json=request, persistent=False)
            direct_body = yield direct.content()
            self.fake.ledger.pop()  # asked directly: not agw's to count
            through = yield treq.post(f"{self.http_base}/chat/completions", json=request, persistent=False)
            through_body = yield through.content()
            self.assertEqual(self.fake.http_requests[-1].json["stream_options"]["include_usage"], True)
            self.assertNotIn(b'"usage"', through_body)
            self.assertEqual(re.sub(rb"chatcmpl-\d+", b"ID", through_body), re.sub(rb"chatcmpl-\d+", b"ID", direct_body))
        samples = yield self.scrape()
        self.assert_ledger_on_metrics(samples)

    @inlineCallbacks
    def test_usage_the_client_asked_for_reaches_it(self) -> Any:
        chunks = yield self.sdk(
            lambda c: list(c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
            ))
        )
        self.assertEqual(chunks[-1].usage.prompt_tokens, self.fake.ledger[-1].usage["input_tokens"])


class OtherTypesTests(HTTPTestCase):
    relay_types = {"/v1/embeddings": "embeddings", "/v1/responses": "responses"}

    @inlineCallbacks
    def test_upstream_connection_reused(self) -> Any:
        # Requests from several clients, one after another, go over one
        # pooled upstream connection: a new one each time would add a TCP
        # (and, to OpenAI, a TLS) handshake to every request.
        for _ in range(5):
            yield self.sdk(lambda c: c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]))
        self.assertEqual(len(self.fake.http_requests), 5)
        self.assertEqual(self.fake.connections, 1)

    @inlineCallbacks
    def test_embeddings_and_responses(self) -> Any:
        embedding = yield self.sdk(lambda c: c.embeddings.create(model="text-embedding-3-small", input="hi"))
        self.assertEqual(embedding.data[0].embedding, [0.0, 0.5, 1.0])
        response = yield self.sdk(lambda c: c.responses.create(model="gpt-4o", input="hi"))
        self.assertEqual(response.output_text, "Hello!")
        types = yield self.sdk(lambda c: [event.type for event in c.responses.create(model="gpt-4o", input="hi", stream=True)])
        self.assertEqual(types[-1], "response.completed")
        samples = yield self.scrape()
        self.assert_ledger_on_metrics(samples)
        operations = {dict(l)["gen_ai_operation_name"] for n, l in samples if n == "agentgateway_gen_ai_client_token_usage_count"}
        self.assertEqual(operations, {"chat", "embeddings"})


class PassthroughTests(HTTPTestCase):
    @inlineCallbacks
    def test_get_with_query(self) -> Any:
        response = yield treq.get(f"{self.http_base}/models?limit=2&after=x", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["method"], body["uri"]), (200, "GET", "/v1/models?limit=2&after=x"))
        self.assertEqual(self.fake.http_requests[0].headers["authorization"], f"Bearer {BACKEND_KEY}")

    @inlineCallbacks
    def test_post_body_unchanged(self) -> Any:
        payload = b"\x00binary\xff" * 1000
        response = yield treq.post(f"{self.http_base}/files?purpose=x", data=payload, persistent=False)
        body = yield response.json()
        seen = self.fake.http_requests[0]
        self.assertEqual((body["uri"], seen.body_size), ("/v1/files?purpose=x", len(payload)))
        self.assertNotIn("model", seen.headers)

    @inlineCallbacks
    def test_large_upload_streams(self) -> Any:
        """200 MB through agw without growing the process by anything like it."""
        import hashlib
        import resource
        import tempfile

        size = 200 * 1024 * 1024
        digest = hashlib.sha256()
        upload = tempfile.TemporaryFile()
        self.addCleanup(upload.close)
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            upload.write(block)
            digest.update(block)
        upload.seek(0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        response = yield treq.post(f"{self.http_base}/files", data=FileBodyProducer(upload), persistent=False)
        body = yield response.json()
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        self.assertEqual((body["body_size"], body["body_sha256"]), (size, digest.hexdigest()))
        # client, gateway and fake share this process: all three together
        self.assertLess(grown_mib, 64, f"peak RSS grew by {grown_mib:.0f} MiB")


class ErrorTests(HTTPTestCase):
    @inlineCallbacks
    def test_upstream_error_passed_through(self) -> Any:
        body = b'{"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'
        self.fake.fail_http(429, body)
        response = yield treq.post(f"{self.http_base}/chat/completions", json={"model": "m", "messages": []}, persistent=False)
        self.assertEqual((response.code, (yield response.content())), (429, body))

    @inlineCallbacks
    def test_sdk_sees_openai_error(self) -> Any:
        self.fake.fail_http(401, b'{"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}')
        call = self.sdk(lambda c: c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]))
        error = yield self.assertFailure(call, openai.AuthenticationError)
        self.assertEqual(error.code, "invalid_api_key")

    @inlineCallbacks
    def test_invalid_json_is_400_without_upstream(self) -> Any:
        response = yield treq.post(f"{self.http_base}/chat/completions", data=b"{nope", persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (400, "invalid_json"))
        self.assertEqual(self.fake.http_requests, [])

    @inlineCallbacks
    def test_unreachable_is_502(self) -> Any:
        yield self.fake_port.stopListening()
        response = yield treq.get(f"{self.http_base}/models", persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (502, "upstream_unreachable"))

    @inlineCallbacks
    def test_no_cookie_crosses_clients(self) -> Any:
        for _ in range(2):
            response = yield treq.get(f"{self.http_base}/models", persistent=False)
            self.assertTrue(response.headers.getRawHeaders(b"set-cookie"))  # the client gets its own
            yield response.content()
        self.assertNotIn("cookie", self.fake.http_requests[1].headers)


class LeftClientTests(HTTPTestCase):
    http_options = HTTPOptions(usage_grace=0.2)  # past it, an answer whose client left is given up

    @inlineCallbacks
    def test_client_disconnect_cancels_upstream_after_the_usage_grace(self) -> Any:
        self.fake.hang_http()
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        yield wait_until(lambda: self.fake.http_requests)
        sock.close()
        yield wait_until(lambda: self.fake.http_abandoned)
        self.assertEqual(self.fake.http_abandoned, [b"/v1/models"])


class TimeoutTests(HTTPTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        from agw.http import HTTPOptions

        self.http_options = HTTPOptions(response_timeout=0.3)
        yield super().setUp()

    @inlineCallbacks
    def test_silent_upstream_is_504(self) -> Any:
        self.fake.hang_http()
        response = yield treq.get(f"{self.http_base}/models", persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (504, "upstream_timeout"))
        yield wait_until(lambda: self.fake.http_abandoned)


# The same tests on twisted.web's server and Agent (--legacy-http).
TwistedWebCompletionsTests = on_twisted_web(CompletionsTests)
TwistedWebOtherTypesTests = on_twisted_web(OtherTypesTests)
TwistedWebPassthroughTests = on_twisted_web(PassthroughTests)
TwistedWebErrorTests = on_twisted_web(ErrorTests)
TwistedWebLeftClientTests = on_twisted_web(LeftClientTests)
TwistedWebTimeoutTests = on_twisted_web(TimeoutTests)
