"""
The provider's WebRTC endpoints as agw calls them: with the backend key (or,
for a raw SDP offer, the client secret agw minted), through the gateway's
one L{UpstreamClient}, answers read whole up to a bound.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers

from agw.config import MiB
from agw.http import BytesBodyProducer, UpstreamClient, read_answer
from agw.routing import RouteContext, upstream_headers

# An SDP answer or a client secret is a few kilobytes.
MAX_PROVIDER_ANSWER = 1 * MiB


class ProviderUnavailable(Exception):
    """The provider could not be asked, or did not answer in time: C{status} (502, 504) and C{code} for the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@frozen
class ProviderAnswer:
    """What the provider answered: status, headers, the whole body."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0].decode("latin-1") if values else None


class Provider:
    """The WebRTC endpoints of one route's backend (C{context}), called within C{timeout} seconds each."""

    def __init__(self, client: UpstreamClient, context: RouteContext, timeout: float) -> None:
        self._client, self._context, self._timeout = client, context, timeout

    async def post(self, path: str, body: bytes, content_type: str, client_address: str | None = None, bearer: str | None = None) -> ProviderAnswer:
        """
        POST C{body} to C{path} (a normalised path on the route's backend,
        no query): with the backend key, or C{bearer} (a minted client
        secret) in its place. Raises L{ProviderUnavailable}.
        """
        context = self._context
        url = context.target.url(path, "")
        headers = Headers()
        for name, value in upstream_headers(
            [("content-type", content_type)] if content_type else [], context.policies, client_address=client_address, key_header=context.target.key_header,
        ):
            if bearer is None or name not in ("authorization", context.target.key_header[0]):
                headers.addRawHeader(name, value)
        if bearer is not None:
            headers.setRawHeaders(b"authorization", [f"Bearer {bearer}".encode("latin-1")])
        headers.setRawHeaders(b"host", [context.target.authority.encode("ascii")])
        pending = self._client.request(b"POST", url, headers, BytesBodyProducer(body), context.target)
        pending.addTimeout(self._timeout, context.reactor)
        try:
            response: Any = await pending
            data = await read_answer(response, MAX_PROVIDER_ANSWER).addTimeout(self._timeout, context.reactor)
        except (TimeoutError, CancelledError):
            raise ProviderUnavailable(504, "the provider did not answer in time", "upstream_timeout") from None
        except ResponseFailed:
            raise ProviderUnavailable(502, "the provider closed the connection", "upstream_closed") from None
        except Exception:  # connection refused, DNS, TLS, an answer too large: the client learns no more than this
            raise ProviderUnavailable(502, "the provider could not be reached", "upstream_unreachable") from None
        return ProviderAnswer(response.code, response.headers, data)
