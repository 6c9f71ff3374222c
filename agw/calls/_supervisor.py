"""
L{CallSupervisor}: one call, metered and governed from its sideband. It
does not care how the call started (a browser's WebRTC offer today, a
phone's SIP INVITE later): it is given a way to open the call's sideband and
a way to hang the call up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from agw.config import FailureMode, RealtimeCalls
from agw.decisions import Denial
from agw.metering import (
    ATTACHED, ATTACHING, BUDGET, CLIENT, ENDING, PROVIDER, RECONNECTING, SIDEBAND_LOST, UNSUPERVISED, CallRecord,
    RealtimeSession,
)
from agw.realtime import SidebandProtocol, UpstreamRefused

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
# The hang-up agw tried last answered this (None: no answer at all); 404: the call was already over.
HangUp = Callable[[], Awaitable["int | None"]]


class SidebandUnavailable(Exception):
    """The call's sideband could not be opened (after every attempt): the call was hung up."""


class CallSupervisor:
    """
    The supervisor of call C{call_id} (one per call, on the process that
    made it), the L{agw.realtime.CallControl} of its sideband.

    Every event the provider sends on the sideband goes through the
    call's L{RealtimeSession} (the leg reports to it), so a call's tokens,
    prices, budget charges and access-log lines are a WebSocket session's.
    A response the provider starts that governance refuses is cancelled by
    its id; when a Block budget is spent for good, every response in flight
    is cancelled, their usage awaited (up to C{grace} seconds), and the call
    hung up. A sideband that drops is opened again with back-off
    (C{policy}); one that cannot come back hangs the call up (failClosed) or
    leaves it unsupervised (failOpen), and the call is counted as not
    metered whole either way. A sideband refused 404 means the call is over.
    """

    log = Logger()

    def __init__(
        self, call_id: str, owner: Any, session: RealtimeSession, record: CallRecord,
        open_leg: Callable[[], Deferred[SidebandProtocol]], hang_up: HangUp, policy: RealtimeCalls, grace: float, clock: Any,
    ) -> None:
        self.call_id, self.owner, self.session, self.record = call_id, owner, session, record
        self._open_leg, self._hang_up, self._policy, self._grace, self._clock = open_leg, hang_up, policy, grace, clock
        self.finished: Deferred[None] = Deferred()  # fires when supervision is over
        self.leg: SidebandProtocol | None = None
        self.end: str | None = None  # how the call ends, once it is ending
        self._waiting: Deferred[Any] | None = None  # the attach loop's connection attempt or back-off wait
        self._hanging_up: Deferred[int | None] | None = None
        self._hang_up_status: int | None = None
        self._cancelled: set[str] = set()
        self._timer: Any = None
        self._settle_waiter: Deferred[None] | None = None
        self._clean_close = False
        self._closing = False  # agw closed the sideband: its close ends the supervision

    # Attaching

    def start(self) -> Deferred[None]:
        """
        Open the call's first sideband (with the reconnects' back-off):
        fires once it is open; fails with L{SidebandUnavailable} after the
        call was hung up (a call agw cannot meter is not let through).
        """
        self.record.enter(ATTACHING)

        async def first() -> None:
            try:
                leg = await self._attach()
            except Exception as e:
                if self.end is None:
                    self.log.warn("call {call}: no sideband, hanging up: {error}", call=self.call_id, error=_why(e))
                    await self.stop(UNSUPERVISED)
                raise SidebandUnavailable(_why(e)) from None
            if leg is None:  # over already
                self._finish(PROVIDER)
                raise SidebandUnavailable("the provider says the call is over")
            self.session.started()
            self._attached(leg)

        return ensureDeferred(first())

    async def _attach(self) -> SidebandProtocol | None:
        """An open sideband, after up to C{reconnect_attempts} retries; C{None} if the provider says the call is over."""
        attempt = 0
        while True:
            try:
                self._waiting = self._open_leg()
                return await self._waiting  # type: ignore[no-any-return]
            except Exception as e:
                if self.end is not None:
                    raise  # the call is ending: stop trying
                if isinstance(e, UpstreamRefused) and e.status == 404:
                    return None
                error: Exception = e
            finally:
                self._waiting = None
            attempt += 1
            if attempt > self._policy.reconnect_attempts:
                raise error
            self._waiting = deferLater(self._clock, self._policy.backoff(attempt), lambda: None)
            await self._waiting

    def _attached(self, leg: SidebandProtocol) -> None:
        self.leg, leg.control = leg, self
        self.record.enter(ATTACHED)

    async def _reattach(self) -> None:
        try:
            leg = await self._attach()
        except Exception as e:
            if self.end is not None:
                return  # ending: it goes on from there
            self.record.lost()
            self.log.warn("call {call}: sideband lost for good: {error}", call=self.call_id, error=_why(e))
            if self._policy.failure_mode is FailureMode.FAIL_CLOSED:
                await self.stop(SIDEBAND_LOST)
            else:
                self._finish(SIDEBAND_LOST)  # failOpen: the call goes on, unmetered
            return
        if leg is None:  # the call is over: a clean close said everything first
            if not self._clean_close:
                self.record.lost()
            self._finish(PROVIDER)
            return
        self.record.lost()  # back, but what happened meanwhile was not seen
        self.record.reconnected()
        self._attached(leg)

    # CallControl

    def response_refused(self, response_id: str | None, refusal: Denial) -> None:
        if response_id is not None:
            self._cancelled.add(response_id)  # the leg cancelled it
        if refusal.final:
            self._stop_soon(BUDGET, refusal)

    def budget_spent(self, refusal: Denial) -> None:
        self._stop_soon(BUDGET, refusal)

    def sideband_event(self) -> None:
        if self.end is not None and not self.session.awaiting_usage:
            self._settled()

    def sideband_closed(self, leg: SidebandProtocol, was_clean: bool, code: int | None, reason: str | None) -> None:
        self.leg = None
        if self.end is not None:
            self._settled()  # no more usage can come
            if self._closing:
                self._finish(self.end, code)
            return
        self._clean_close = was_clean and code == NORMAL_CLOSURE
        self.record.enter(RECONNECTING)
        ensureDeferred(self._reattach())

    # Ending

    def _stop_soon(self, end: str, refusal: Denial) -> None:
        if self.end is None:
            self.log.info("call {call}: {why}; hanging up", call=self.call_id, why=refusal.message)
            ensureDeferred(self.stop(end))

    async def stop(self, end: str) -> int | None:
        """
        End the call (C{end}: why): cancel the responses in flight and wait
        (up to the grace) for their usage, then hang up — at once for a
        client's hang-up — and, once the provider's answer is back, close
        the sideband when what it still reports has come (up to the grace
        again). Returns the provider's answer to the hang-up (C{None}: none;
        404: the call was over already).
        """
        if self.end is not None:
            return await self._hang_up_result()
        self.end = end
        self.record.enter(ENDING)
        if self._waiting is not None:
            self._waiting.cancel()  # no more reconnecting
        leg = self.leg
        if end != CLIENT and leg is not None:
            for response_id in self.session.in_flight:
                if response_id not in self._cancelled:
                    self._cancelled.add(response_id)
                    leg.cancel(response_id)
            await self._usage_settled()
        status = await self._hang_up_result()
        ensureDeferred(self._close_after_usage())
        return status

    async def _close_after_usage(self) -> None:
        """After the hang-up: what the provider still reports (up to the grace), then the sideband closes."""
        await self._usage_settled()
        leg = self.leg
        if leg is None:
            self._finish(self.end)  # type: ignore[arg-type]
        else:
            self._closing = True
            leg.close(NORMAL_CLOSURE, "call ended")

    async def shut_down(self, end: str) -> None:
        """
        The gateway stops: hang the call up (failClosed), or (failOpen) stop
        watching it and let it go on without agw (not metered whole).
        """
        if self._policy.failure_mode is FailureMode.FAIL_CLOSED or self.end is not None:
            await self.stop(end)
            return
        self.end = end
        self.record.enter(ENDING)
        self.record.lost()
        if self._waiting is not None:
            self._waiting.cancel()
        if self.leg is None:
            self._finish(end)
        else:
            self._closing = True
            self.leg.close(GOING_AWAY, "gateway shutting down")

    def _usage_settled(self) -> Deferred[None]:
        """Fires when no response of the call awaits its usage, the sideband is gone, or the grace ran out."""
        waiter: Deferred[None] = Deferred()
        if self.leg is None or not self.session.awaiting_usage:
            waiter.callback(None)
            return waiter
        self._settle_waiter = waiter
        self._timer = self._clock.callLater(self._grace, self._settled)
        return waiter

    def _settled(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiter, self._settle_waiter = self._settle_waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _hang_up_result(self) -> Deferred[int | None]:
        """The hang-up (started on first use, retried with back-off): fires with the provider's status."""
        if self._hanging_up is None:
            self._hanging_up = ensureDeferred(self._hang_up_with_retries())
        waiter: Deferred[int | None] = Deferred()

        def tell(status: int | None) -> int | None:
            waiter.callback(status)
            return status

        self._hanging_up.addCallback(tell)
        return waiter

    async def _hang_up_with_retries(self) -> int | None:
        status: int | None = None
        for attempt in range(self._policy.reconnect_attempts + 1):
            if attempt:
                await deferLater(self._clock, self._policy.backoff(attempt), lambda: None)
            try:
                status = await self._hang_up()
            except Exception as e:
                self.log.warn("call {call}: hang-up failed: {error}", call=self.call_id, error=_why(e))
                status = None
            if status is not None and (200 <= status < 300 or status == 404):
                break
        else:
            self.log.error("call {call}: the provider did not take the hang-up (last answer: {status})", call=self.call_id, status=status)
        self._hang_up_status = status
        return status

    def _finish(self, end: str, code: int | None = None) -> None:
        if self.finished.called:
            return
        self.end = self.end or end
        self.session.ended(code, self.end)
        self.record.ended(self.end, **{"agw.call.hangup_status": self._hang_up_status})
        self.finished.callback(None)


def _why(error: BaseException) -> str:
    if isinstance(error, UpstreamRefused):
        return f"refused {error.status}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
