"""
The OpenAI Node SDK's Realtime client (C{OpenAIRealtimeWS}, which always
connects with wss://) completes a session through agw's HTTPS listener,
trusting the test CA through C{NODE_EXTRA_CA_CERTS}; every token it was
sent is on agw's metrics. The SDK and C{ws} are pinned in
C{tests/node/package.json} (C{.ci/run} installs node and them). Without
node the test is skipped, except in CI, where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from agw.testing import TestCA
from tests.support import CLIENT_KEY, REPO, listening_fake, registry_samples, running_gateway, token_sums, wait_until
from tests.tls_support import https_config

NODE_DIR = os.path.join(REPO, "tests", "node")


def node_ready() -> str:
    """The node executable, with the pinned packages installed (C{npm ci} if they are not); skips without node."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            raise AssertionError("node is not installed: .ci/run installs it (apt-get install nodejs npm)")
        raise SkipTest("node is not installed (CI installs it: see .ci/run)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError("node is installed but npm is not: cannot install tests/node's packages")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True, timeout=300)
    return node


class NodeSDKTests(TestCase):
    @inlineCallbacks
    def test_realtime_session_over_wss(self) -> Any:
        node = yield deferToThread(node_ready)
        fake, upstream_port = yield listening_fake(self)
        ca = TestCA.make()
        files = os.path.abspath(self.mktemp())  # node runs in tests/node
        os.makedirs(files)
        gateway, _, port = yield running_gateway(self, https_config(upstream_port, ca.listener_tls(files)))
        ca_file = os.path.join(files, "ca.pem")
        with open(ca_file, "wb") as f:
            f.write(ca.ca_pem)
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": ca_file, "AGW_CLIENT_KEY": CLIENT_KEY}
        env.pop("OPENAI_API_KEY", None)
        command = [node, "realtime_session.mjs", f"https://127.0.0.1:{port}/v1", "gpt-realtime", "3"]
        done = yield deferToThread(subprocess.run, command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        session = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertTrue(session["url"].startswith(f"wss://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"), session["url"])
        self.assertEqual((session["code"], session["protocol"]), (1000, "TLSv1.3"))
        self.assertEqual(int(session["serial"], 16), ca.serial)
        self.assertEqual(session["usages"], [entry.usage for entry in fake.ledger])
        self.assertEqual(len(session["usages"]), 3)

        def counted() -> dict[tuple[str, str, str], float]:
            return {k: v for k, v in token_sums(registry_samples(gateway.metrics.registry)).items() if v}

        yield wait_until(lambda: counted() == fake.billed())
