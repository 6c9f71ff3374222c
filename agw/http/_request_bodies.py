"""
What a forwarder sends upstream of a client's request body: twisted.web's
spooled body (a file) or agw's front door's arriving one, streamed as it
is for the route types that do not read it, read whole, checked, enriched
and guarded (L{agw.http._prepare}) for those that do.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Request

from agw.config import RouteType
from agw.http._arriving import ArrivingBody
from agw.http._body import when_client_leaves
from agw.http._client import HTTPOptions
from agw.http._prepare import prepare_json
from agw.http._request_body import BytesBodyProducer, Refused, json_object
from agw.metering import HTTPExchange
from agw.routing import RouteContext, guard_headers, text_pairs


def client_headers(request: Request) -> list[tuple[str, str]]:
    """The client's headers as (lower-case name, value) text pairs."""
    return text_pairs(request.requestHeaders)


class RequestBodies:
    """The request bodies of one route type (C{reads}: it reads them, for the model and usage) with C{options}' limits."""

    def __init__(
        self, route_type: RouteType, reads: bool, options: HTTPOptions, context: RouteContext, calls_out: bool,
    ) -> None:
        self._type, self._reads, self._options, self._context = route_type, reads, options, context
        # A request guard calls out (webhook, moderation): it may be sent the client's headers.
        self._calls_out = calls_out

    def limit(self, method: bytes) -> int:
        """The largest body taken with C{method}."""
        if not self._reads or method != b"POST":
            return self._options.max_request_body
        return min(self._options.max_json_body, self._options.max_request_body)

    async def read(self, request: Request, exchange: HTTPExchange) -> IBodyProducer | None:
        """The body to send upstream (after guards that call out: a client leaving cancels them); notes the model on C{exchange}."""
        arriving: ArrivingBody | None = getattr(request, "agw_body", None)
        if arriving is not None:  # agw's front door: the body as it arrives
            if not self._reads or request.method != b"POST":
                if not arriving.complete:
                    return arriving  # streamed as it arrives
                # In already: sent with the request's head (the door held it, within the route's limit).
                return BytesBodyProducer(arriving.take_whole(self.limit(request.method))) if arriving.received else None
            limit = self.limit(b"POST")
            # Most bodies are in when their head is routed on: no Deferred to wait on.
            raw = arriving.take_whole(limit) if arriving.complete else await arriving.whole(limit)
            return await self._prepared(request, exchange, raw)
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size > self.limit(request.method):
            # A gateway site refuses these before they arrive whole; an embedder's site does not.
            raise Refused.too_large(self.limit(request.method))
        if not self._reads or request.method != b"POST":
            # twisted.web spooled a large body to a temporary file: stream it
            # from there instead of reading it into memory.
            return FileBodyProducer(content) if size else None
        return await self._prepared(request, exchange, content.read())

    async def _prepared(self, request: Request, exchange: HTTPExchange, raw: bytes) -> IBodyProducer:
        """A JSON body read whole: checked, enriched and guarded (a guard that calls out is awaited)."""
        headers = guard_headers(client_headers(request), self._context.policies) if self._calls_out else None
        parsed: Any = None
        if len(raw) > self._options.json_thread_threshold:  # a 32 MiB decode would hold every connection a while
            reactor = self._context.reactor
            parsed = await deferToThreadPool(reactor, reactor.getThreadPool(), json_object, raw)
        data = prepare_json(raw, self._type, self._context, exchange, headers, parsed)
        if isinstance(data, Deferred):  # a guard calls out: wait for it, unless the client leaves first
            when_client_leaves(request, data.cancel)
            data = await data
        return BytesBodyProducer(data)
