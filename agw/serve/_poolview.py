"""
L{PoolView}: the admin page's data with C{--workers N}. Sessions, rate
limits and recent costs live in the workers: the parent asks each worker's
admin API (on loopback, its port told over the control pipe) and gathers
the answers; budgets are the parent's own read of the shared ledger. A
worker that does not answer within two seconds is listed as unreachable and
the page shows the others.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from agw.serve._operator import consumers_json

ASK_TIMEOUT = 2.0  # seconds a worker has to answer the page (a busy worker is slow, not gone)
# The page's session ids with workers: "w<worker>.<the worker's id>".
POOL_SESSION_ID = re.compile(r"w(\d{1,4})\.([A-Za-z0-9_-]{1,64})")


class PoolView:
    """The admin page's data for a L{agw.serve._workerpool.WorkerPool}: each worker's, gathered."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        connections = HTTPConnectionPool(pool.reactor, persistent=True)
        connections.maxPersistentPerHost = 2
        self._agent = Agent(pool.reactor, pool=connections)

    def _ask(self, port: int, path: str, body: bytes | None = None) -> Deferred[tuple[int, Any]]:
        """One request to a worker's admin API: fires with (status, JSON body)."""
        headers = Headers({b"host": [b"127.0.0.1:%d" % port]})
        if body is not None:
            headers.setRawHeaders(b"content-type", [b"application/json"])
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        method = b"POST" if body is not None else b"GET"
        url = f"http://127.0.0.1:{port}{path}".encode("ascii")
        asked = self._agent.request(method, url, headers, producer)
        asked.addCallback(lambda response: readBody(response).addCallback(lambda data: (response.code, json.loads(data))))
        return asked.addTimeout(ASK_TIMEOUT, self._pool.reactor)

    @inlineCallbacks
    def _gather(self, path: str) -> Any:
        """Each worker's answer to C{GET path}: C{[(worker, JSON or None)]}, and who answered."""
        workers = [worker for worker in self._pool.workers if worker.admin_port is not None]
        results = yield DeferredList([self._ask(worker.admin_port, path) for worker in workers], consumeErrors=True)
        answers = {
            worker.index: result[1] for worker, (ok, result) in zip(workers, results) if ok and result[0] == 200
        }
        reach = [{"index": worker.index, "reachable": worker.index in answers} for worker in self._pool.workers]
        return answers, reach

    @inlineCallbacks
    def sessions(self) -> Any:
        """Every worker's sessions, their ids made the pool's (C{w<worker>.<id>}), oldest first."""
        answers, reach = yield self._gather("/api/sessions")
        sessions = [
            {**session, "id": f"w{index}.{session['id']}", "worker": index}
            for index, answer in answers.items() for session in answer.get("sessions", [])
        ]
        sessions.sort(key=lambda session: session["started_at"])
        return {"sessions": sessions, "now": self._pool.reactor.seconds(), "workers": reach}

    @inlineCallbacks
    def consumers(self) -> Any:
        """Budgets from the parent's ledger read; each route's rate limit buckets summed over the workers (each holds 1/N)."""
        answers, reach = yield self._gather("/api/consumers")
        routes: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        for answer in answers.values():
            for route in answer.get("rate_limits", []):
                buckets = routes.setdefault((route["bind"], route["listener"], route["route"]), {})
                for bucket in route["buckets"]:
                    total = buckets.setdefault(bucket["kind"], {"kind": bucket["kind"], "limit": 0, "remaining": 0})
                    total["limit"] += bucket["limit"]
                    total["remaining"] += bucket["remaining"]
                    total["reset_seconds"] = min(total.get("reset_seconds", bucket["reset_seconds"]), bucket["reset_seconds"])
        rate_limits = [
            {"bind": bind, "listener": listener, "route": route, "buckets": list(buckets.values())}
            for (bind, listener, route), buckets in routes.items()
        ]
        pool = self._pool
        return {**consumers_json(pool.config, pool.governor, pool.reactor.seconds()), "rate_limits": rate_limits, "workers": reach}

    @inlineCallbacks
    def costs(self) -> Any:
        """Every worker's recent costs, summed by consumer and model."""
        answers, reach = yield self._gather("/api/costs")
        sums: dict[tuple[Any, str], dict[str, Any]] = {}
        window, since = None, []
        for answer in answers.values():
            window = answer.get("window_seconds", window)
            if answer.get("since") is not None:
                since.append(answer["since"])
            for cost in answer.get("costs", []):
                total = sums.setdefault((cost["consumer"], cost["model"]), {**cost, "cost_usd": 0.0, "tokens": 0, "records": 0})
                total["cost_usd"] = float(Decimal(str(total["cost_usd"])) + Decimal(str(cost["cost_usd"])))
                total["tokens"] += cost["tokens"]
                total["records"] += cost["records"]
        costs = sorted(sums.values(), key=lambda entry: (-entry["cost_usd"], -entry["tokens"]))
        return {
            "window_seconds": window, "costs": costs, "total_usd": float(sum(Decimal(str(c["cost_usd"])) for c in costs)),
            "since": min(since) if since else None, "workers": reach,
        }

    @inlineCallbacks
    def close(self, session_id: str, reason: str) -> Any:
        """End session C{w<worker>.<id>} through its worker (its own close path); C{False}: no such session."""
        match = POOL_SESSION_ID.fullmatch(session_id)
        worker = None
        if match is not None:
            worker = next((w for w in self._pool.workers if w.index == int(match.group(1)) and w.admin_port is not None), None)
        if worker is None:
            return False
        body = json.dumps({"reason": reason}).encode()
        status, _ = yield self._ask(worker.admin_port, f"/api/sessions/{match.group(2)}/close", body)  # type: ignore[union-attr]
        return status == 202
