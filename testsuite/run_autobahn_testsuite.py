"""
Run the Autobahn|Testsuite fuzzing client against agw relaying to an echo
upstream, and summarise the report.

The testsuite needs Python 2.7:

    python2.7 -m pip install --target /tmp/abts autobahntestsuite
    python testsuite/run_autobahn_testsuite.py --testsuite /tmp/abts [--cases '*'] [--report docs/autobahn]
    python testsuite/run_autobahn_testsuite.py --testsuite /tmp/abts --client-deflate small --cases '12.*,13.*'

agw runs as `twistd -n agw` with a config whose realtime route points at an
Autobahn echo server in this process. The compression cases (12.*, 13.*)
run only with a --client-deflate that accepts compression on the client leg
(agw's upstream leg never compresses; with agw's default, off, they cannot).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, threads

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "bench"))
from common import free_port, start_agw_with  # noqa: E402


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def config(echo_port: int) -> dict:
    return {
        "binds": [{"port": free_port(), "listeners": [{"routes": [{
            "backends": [{"ai": {"name": "echo", "provider": {"openAI": {}}, "hostOverride": f"127.0.0.1:{echo_port}"}}],
            "policies": {"ai": {"routes": {"*": "realtime"}}, "backendAuth": {"key": "sk-testsuite"}},
        }]}]}],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--testsuite", required=True, help="where autobahntestsuite was pip-installed (--target)")
    parser.add_argument("--python2", default="python2.7")
    parser.add_argument("--cases", default="*", help="case patterns, comma-separated")
    parser.add_argument("--client-deflate", default="off", help="agw's --client-deflate (small, accept: the compression cases run too)")
    parser.add_argument("--report", default=os.path.join(REPO, "docs", "autobahn"))
    args = parser.parse_args()

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    # failByDrop=False: like OpenAI, the echo sends its close frame (1007 for invalid UTF-8...) before hanging up.
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, failByDrop=False)
    echo = reactor.listenTCP(0, factory, interface="127.0.0.1")
    data = config(echo.getHost().port)
    # The suite sends 4 MiB in up to 65,536 fragments (9.3.*, 9.4.*): beyond agw's default limit of 1,024
    # fragments per message (a hostile-client bound), so the conformance run raises it.
    gateway, port = start_agw_with(data, "--max-fragments", "100000", "--client-deflate", args.client_deflate)
    outdir = tempfile.mkdtemp()
    spec = {
        "outdir": outdir,
        "servers": [{"agent": "agw", "url": f"ws://127.0.0.1:{port}/v1/realtime"}],
        "cases": args.cases.split(","),
        "exclude-cases": ["12.*", "13.*"] if args.client_deflate == "off" else [],
        "exclude-agent-cases": {},
    }
    spec_file = os.path.join(outdir, "spec.json")
    with open(spec_file, "w") as f:
        json.dump(spec, f)
    # addsitedir, not PYTHONPATH: the zope namespace package needs its .pth file.
    bootstrap = (
        f"import site, sys; site.addsitedir({args.testsuite!r}); "
        "sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', sys.argv[1]]; "
        "from autobahntestsuite import wstest; wstest.run()"
    )
    env = dict(os.environ)
    command = [args.python2, "-c", bootstrap, spec_file]
    result: list[int] = []

    def run() -> int:
        return subprocess.call(command, env=env, cwd=outdir, stdout=subprocess.DEVNULL)

    threads.deferToThread(run).addBoth(result.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    gateway.terminate()
    gateway.wait()
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)["agw"]
    behaviours = collections.Counter(case["behavior"] for case in index.values())
    closes = collections.Counter(case["behaviorClose"] for case in index.values())
    failed = sorted((c for c, r in index.items() if r["behavior"] == "FAILED" or r["behaviorClose"] == "FAILED"),
                    key=lambda c: [int(p) for p in c.split(".")])
    def cases_with(behaviour: str) -> list[str]:
        return sorted((c for c, r in index.items() if r["behavior"] == behaviour), key=lambda c: [int(p) for p in c.split(".")])

    os.makedirs(args.report, exist_ok=True)
    summary = {
        "cases": len(index), "behavior": dict(behaviours), "behaviorClose": dict(closes), "failed": failed,
        "non_strict": cases_with("NON-STRICT"), "informational": cases_with("INFORMATIONAL"),
    }
    with open(os.path.join(args.report, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if failed or result != [0] else 0)


if __name__ == "__main__":
    main()
