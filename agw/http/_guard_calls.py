"""
Guards that call out: agentgateway's guardrail webhook and OpenAI's
moderation endpoint, asked without blocking the reactor. L{GuardCalls}
(one per gateway) makes the calls; L{check_guards} runs a guard list in
order over L{Slot}s, regex guards in place, the others through the calls,
and stops at the first reject. What is sent and what an answer means is
L{agw.decisions}' (pure); this module only sends and receives.

A call that fails (no connection, over C{timeout}, not 2xx, not JSON or
over L{MAX_ANSWER} bytes, no answer agw can act on) rejects
(C{failClosed}: 503 C{guardrail_unavailable}) or lets the text through
(C{failOpen}), as the guard's C{failureMode} says (docs/guardrails.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from agw._internals import quiet_pool
from agw.config import FailureMode, Guard, MiB, Moderation, Scope, Webhook
from agw.decisions import (
    ALLOW,
    FAIL_OPEN,
    REJECT,
    UNAVAILABLE,
    BadAnswer,
    GuardCheck,
    GuardOutcome,
    Slot,
    Verdict,
    check_regex,
    forwarded_headers,
    guard_slots,
    in_scope,
    moderation_payload,
    moderation_verdict,
    webhook_payload,
    webhook_verdict,
)
from agw.http._answer import read_answer
from agw.http._request_body import BytesBodyProducer
from agw.routing import TrustRootError, read_trust_root

#: The largest answer a guard backend may give (bytes).
MAX_ANSWER = 1 * MiB


class GuardCallFailed(Exception):
    """A guard backend could not be asked, or did not answer in time, with 2xx and JSON."""


def _cancelled(failure: Failure) -> bool:
    """Whether a call failed because it was cancelled (twisted.web may wrap the CancelledError)."""
    return bool(failure.check(CancelledError)) or any(_cancelled(inner) for inner in getattr(failure.value, "reasons", ()) or ())


def _reason(failure: Failure) -> str:
    """A failed call in a few words (twisted.web wraps connection errors in lists of Failures)."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(_reason(inner) for inner in reasons)
    return f"{type(failure.value).__name__}: {failure.value}" if str(failure.value) else type(failure.value).__name__


class GuardCalls:
    """
    The gateway's calls to guard backends: one HTTP client (a pool of
    persistent connections) per trust root, no cookies, no redirects.
    Webhooks are plain HTTP (agentgateway's C{target.host}); a moderation
    URL may be HTTPS, verified against its C{backendTLS.root} or the
    system's roots.
    """

    log = Logger()

    def __init__(self, reactor: Any, connect_timeout: float = 10.0, max_answer: int = MAX_ANSWER) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self.max_answer = max_answer
        # Trust root file (None: the system's roots) -> its PEM, client and pool.
        self._clients: dict[str | None, tuple[bytes | None, Agent, HTTPConnectionPool]] = {}
        self._retired: list[HTTPConnectionPool] = []  # pools of roots a reload changed: closed at stop too

    def register(self, guards: tuple[Guard, ...], trust_roots: Mapping[str, bytes] | None = None) -> None:
        """
        Read the trust roots C{guards}' moderation calls use (at start and
        on each reload: a changed file gets a new client), from
        C{trust_roots} where it has them (read already); raises
        L{TrustRootError} for one that cannot be read.
        """
        for guard in guards:
            root = guard.moderation.tls_root if guard.moderation is not None else None
            if root is not None:
                self._client(root, trust_roots[root] if trust_roots and root in trust_roots else read_trust_root(root))

    def _client(self, root: str | None, pem: bytes | None) -> Agent:
        known = self._clients.get(root)
        if known is not None:
            if known[0] == pem:
                return known[1]
            known[2].closeCachedConnections()
            self._retired.append(known[2])
        pool = quiet_pool(HTTPConnectionPool(self._reactor, persistent=True))
        pool.retryAutomatically = False
        trust = Certificate.loadPEM(pem) if pem is not None else None
        agent = Agent(self._reactor, BrowserLikePolicyForHTTPS(trust), connectTimeout=self._connect_timeout, pool=pool)
        self._clients[root] = (pem, agent, pool)
        return agent

    def _agent(self, root: str | None) -> Agent:
        known = self._clients.get(root)
        if known is not None:
            return known[1]
        return self._client(root, read_trust_root(root) if root is not None else None)

    def post_json(
        self, url: str, payload: Any, headers: Mapping[str, str], timeout: float, tls_root: str | None = None,
    ) -> Deferred[Any]:
        """
        POST C{payload} as JSON to C{url}; fires with the parsed answer, or
        fails with L{GuardCallFailed} (cancelling it abandons the call).
        """
        try:
            agent = self._agent(tls_root)
            target = url.encode("ascii")
        except (TrustRootError, UnicodeEncodeError) as e:
            return fail(GuardCallFailed(str(e)))
        sent = Headers({b"content-type": [b"application/json"], b"accept": [b"application/json"]})
        for name, value in headers.items():  # as the client sent them (latin-1)
            sent.addRawHeader(name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        calling = agent.request(b"POST", target, sent, BytesBodyProducer(json.dumps(payload).encode()))
        calling.addCallback(self._read)

        def timed_out(result: Any, timeout: float) -> Failure:
            return Failure(GuardCallFailed(f"no answer within {timeout:g}s"))

        calling.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)

        def failed(failure: Failure) -> Failure:
            if failure.check(GuardCallFailed):
                return failure
            if _cancelled(failure):
                return Failure(CancelledError())  # the caller gave up: no failure mode applies
            raise GuardCallFailed(_reason(failure))

        return calling.addErrback(failed)

    def _read(self, response: IResponse) -> Deferred[Any]:
        def parse(data: bytes) -> Any:
            if not 200 <= response.code < 300:
                raise GuardCallFailed(f"answered {response.code}")
            try:
                return json.loads(data)
            except (ValueError, RecursionError):
                raise GuardCallFailed("answer is not JSON") from None

        return read_answer(response, self.max_answer).addCallback(parse)

    def webhook(self, webhook: Webhook, slots: list[Slot], phase: str, headers: Mapping[str, str]) -> Deferred[Verdict]:
        """Ask C{webhook} about C{slots} (C{POST /request} or C{/response}); a mask is applied to them."""
        payload = webhook_payload(slots, phase)
        calling = self.post_json(
            f"http://{webhook.host}/{phase}", payload, forwarded_headers(headers, webhook.forward_header_matches),
            webhook.timeout,
        )
        return calling.addCallback(webhook_verdict, slots, phase)

    def moderation(self, guard: Guard, moderation: Moderation, slots: list[Slot]) -> Deferred[Verdict]:
        """Ask OpenAI's moderation endpoint about C{slots}: flagged rejects with the guard's C{rejection}."""
        if not slots:
            return succeed(Verdict(ALLOW))  # nothing to moderate (OpenAI refuses an empty input)
        headers = {"authorization": f"Bearer {moderation.key.value}"} if moderation.key is not None else {}
        calling = self.post_json(
            moderation.url, moderation_payload(slots, moderation.model), headers, moderation.timeout, moderation.tls_root,
        )
        return calling.addCallback(moderation_verdict, guard.rejection)

    def verdict(self, guard: Guard, slots: list[Slot], phase: str, headers: Mapping[str, str]) -> Deferred[Verdict]:
        """What C{guard} (a webhook or moderation guard) decides about the C{slots} in its scope."""
        sent = in_scope(guard, slots)
        if guard.webhook is not None:
            return self.webhook(guard.webhook, sent, phase, headers)
        assert guard.moderation is not None
        return self.moderation(guard, guard.moderation, sent)

    def check(self, guards: tuple[Guard, ...], slots: list[Slot], phase: str, headers: Mapping[str, str]) -> Deferred[GuardOutcome]:
        """L{check_guards} with these calls (for callers that hold a L{GuardCalls}, such as a relay)."""
        return check_guards(guards, slots, phase, self, headers)

    def close(self) -> Deferred[Any]:
        """Close the idle persistent connections (on gateway stop)."""
        pools = [pool for _, _, pool in self._clients.values()] + self._retired
        return DeferredList([pool.closeCachedConnections() for pool in pools])


def check_guards(
    guards: tuple[Guard, ...], slots: list[Slot], phase: str, calls: GuardCalls | None, headers: Mapping[str, str],
) -> Deferred[GuardOutcome]:
    """
    Run C{guards} in order over C{slots} (C{phase} C{request} or
    C{response}), masking in place, until one rejects. C{headers} are the
    client's (lower-case names), of which a webhook gets those its
    C{forwardHeaderMatches} select. Regex guards only: an already-fired
    Deferred. Cancelling it abandons the call in progress.
    """
    if all(guard.regex is not None for guard in guards):
        return succeed(guard_slots(slots, guards))
    if calls is None:
        raise ValueError("webhook and openAIModeration guards need GuardCalls")
    return ensureDeferred(_check(guards, slots, phase, calls, headers))


async def _check(
    guards: tuple[Guard, ...], slots: list[Slot], phase: str, calls: GuardCalls, headers: Mapping[str, str],
) -> GuardOutcome:
    checks: list[GuardCheck] = []
    for index, guard in enumerate(guards):
        if guard.regex is not None:
            action = check_regex(guard, slots)
            verdict = Verdict(action, guard.rejection if action == REJECT else None)
        else:
            try:
                verdict = await calls.verdict(guard, slots, phase, headers)
            except (GuardCallFailed, BadAnswer) as e:
                closed = guard.failure_mode is FailureMode.FAIL_CLOSED
                calls.log.warn(
                    "promptGuard.{phase}[{index}] ({kind}) failed, failing {mode}: {reason}",
                    phase=phase, index=index, kind=guard.kind, mode="closed" if closed else "open", reason=str(e),
                )
                if closed:
                    checks.append(GuardCheck(index, REJECT, guard.kind))
                    return GuardOutcome(tuple(checks), UNAVAILABLE, unavailable=True)
                verdict = Verdict(FAIL_OPEN)
        checks.append(GuardCheck(index, verdict.action, guard.kind))
        if verdict.rejection is not None:
            return GuardOutcome(tuple(checks), verdict.rejection)
    return GuardOutcome(tuple(checks))


def check_response_texts(
    guards: tuple[Guard, ...], texts: list[str], calls: GuardCalls | None, headers: Mapping[str, str],
) -> Deferred[tuple[list[str], GuardOutcome]]:
    """
    Response guards over an answer's texts (one per choice or output
    text): fires with the texts as masked and the outcome. For a whole
    (non-streamed) answer; see L{check_guards}.
    """
    holders = [{"text": text} for text in texts]
    slots = [Slot(holder, "text", Scope.MESSAGES, "assistant") for holder in holders]
    checking = check_guards(guards, slots, "response", calls, headers)
    return checking.addCallback(lambda outcome: ([holder["text"] for holder in holders], outcome))
