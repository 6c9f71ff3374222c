"""
C{twistd agw --access-log json|combined|off}: one line per HTTP request and
per Realtime session (JSON also per response), agentgateway's field names,
no query string, no second Twisted line.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agw.metering import CombinedAccessLog, RouteLabels
from agw.serve import Options
from agw.testing import FakeOpenAI
from tests.support import SEED_CONFIG, TwistdAgw, raw_exchange, run_session

SECRET = "sk-in-the-query"
COMPLETION = (
    b"POST /v1/chat/completions?api-key=" + SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 44\r\nConnection: close\r\n\r\n"
    b'{"model":"x","messages":[{"role":"user"}]}  '
)
# NCSA combined, as web log tools parse it: client, ident, user, [time], "request", status, bytes, "referer", "agent".
COMBINED = re.compile(r'^(\S+) - (\S+) \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "([^"\\]*(?:\\.[^"\\]*)*)" (\d{3}) - "-" "-"$')


class AccessLogFormatTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def exercise(self, access_log: str) -> Any:
        """One completion (with a key in its query) and one Realtime session; fires with stdout's lines."""
        fake = FakeOpenAI()
        upstream = yield fake.listen(reactor)
        self.addCleanup(upstream.stopListening)
        agw = yield TwistdAgw.start(self, upstream.getHost().port, access_log=access_log)
        response = yield deferToThread(raw_exchange, agw.port, COMPLETION)
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response[:100])
        yield deferToThread(run_session, f"ws://127.0.0.1:{agw.port}/v1", 1)
        self.assertEqual((yield agw.stop()), 0)
        with open(agw.stdout) as f:
            written = f.read()
        self.assertNotIn(SECRET, written + agw.log_text())
        self.assertNotIn('"POST /v1/chat/completions', agw.log_text())  # no second, Twisted, line
        return written.splitlines()

    @inlineCallbacks
    def test_json_has_agentgateways_field_names(self) -> Any:
        records = [json.loads(line) for line in (yield self.exercise("json"))]
        self.assertEqual([r["event"] for r in records], ["http", "realtime.response", "realtime.session"])
        http, _, session = records
        self.assertEqual(
            (http["http.method"], http["http.path"], http["http.status"], http["gen_ai.provider.name"]),
            ("POST", "/v1/chat/completions", 200, "openai"),
        )
        for record in (http, session):
            self.assertRegex(record["src.addr"], r"^127\.0\.0\.1:\d+$")
            self.assertRegex(record["duration"], r"^\d+ms$")
            self.assertEqual(int(record["duration"][:-2]), int(record["duration_s"] * 1000))
        self.assertEqual((session["http.method"], session["http.path"]), ("GET", "/v1/realtime"))

    @inlineCallbacks
    def test_combined_is_one_line_per_request_and_session(self) -> Any:
        lines = yield self.exercise("combined")
        parsed = [COMBINED.match(line) for line in lines]
        self.assertTrue(all(parsed), lines)
        self.assertEqual(
            [(m.group(4), m.group(5)) for m in parsed if m],
            [("POST /v1/chat/completions HTTP/1.1", "200"), ("GET /v1/realtime HTTP/1.1", "101")],
        )
        self.assertTrue(all(m.group(1).startswith("127.0.0.1:") for m in parsed if m))

    @inlineCallbacks
    def test_off_writes_nothing(self) -> Any:
        self.assertEqual((yield self.exercise("off")), [])


class CombinedLineTests(SynchronousTestCase):
    def line(self, event: str = "http", **fields: Any) -> str:
        stream = io.StringIO()
        CombinedAccessLog(stream, clock=lambda: 0.0).emit(event, RouteLabels.of(3000, "l", "r"), **fields)
        return stream.getvalue()

    def test_hostile_path_and_consumer_stay_in_their_fields(self) -> None:
        line = self.line(**{
            "http.method": "GET", "http.path": '/v1/"x" 200 - "a\nb', "http.status": 404, "src.addr": "[::1]:5",
            "agw.consumer": 'team "a"',
        })
        self.assertEqual(line.count("\n"), 1)
        match = COMBINED.match(line.rstrip("\n"))
        assert match is not None, line
        self.assertEqual(match.group(1, 2, 3, 5), ("[::1]:5", "team%20%22a%22", "01/Jan/1970:00:00:00 +0000", "404"))
        self.assertEqual(json.loads(f'"{match.group(4)}"'), 'GET /v1/"x" 200 - "a\nb HTTP/1.1')

    def test_responses_have_no_combined_line(self) -> None:
        self.assertEqual(self.line("realtime.response", status="completed"), "")


class AccessLogOptionTests(SynchronousTestCase):
    def test_unknown_format_is_a_usage_error(self) -> None:
        with self.assertRaises(UsageError) as e:
            Options().parseOptions(["-f", SEED_CONFIG, "--access-log", "none"])
        self.assertIn("--access-log: expected one of json, combined, off", str(e.exception))
