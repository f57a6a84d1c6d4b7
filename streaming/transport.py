"""The HTTP transport under the upstream client: httpx's transport interface on aiohttp's connections.

streaming.upstream speaks httpx (requests, responses, errors); this module carries them with aiohttp, whose
connection handling costs far less CPU per streamed event than httpx's own transport (docs/benchmarks.md).
The response body is read with one `readany()` per network read, from an iterator object rather than layers
of generators: a streamed answer's body is read once per token, so every layer costs CPU for every token.

aiohttp's failures become httpx's, which streaming.upstream maps to its error codes: a refused or failed
connection is `ConnectError`/`ConnectTimeout`, no bytes for the read timeout `ReadTimeout`, a connection that
broke or a body cut short `ReadError`, a server that closed before answering `RemoteProtocolError`.
"""

import asyncio
from typing import Any

import aiohttp
import httpx


def _httpx_error(error: Exception) -> httpx.TransportError:
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ClientProxyConnectionError):
        return httpx.ConnectError(message)
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(error, aiohttp.SocketTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message)
    return httpx.ReadError(message)


class Body(httpx.AsyncByteStream):
    """A response body as it arrives, chunk by chunk."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content

    def __aiter__(self) -> "Body":
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _httpx_error(error) from error
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        # A body not read to its end closes its connection (the model server then stops); a whole one returns
        # the connection to the pool.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with an aiohttp session; a response's `stream` is its `Body`.

    The read timeout bounds the wait for the response head only. A body is read without one: aiohttp would
    move a timer at every network read, once per token of a streamed answer, and its reader
    (streaming.upstream) keeps one stall timer per stream instead.
    """

    def __init__(self, session: aiohttp.ClientSession, *, proxy: str | None = None) -> None:
        self.session = session
        self.proxy = proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeout.get("read")):
                response = await self.session.request(
                    request.method,
                    str(request.url),
                    headers=dict(request.headers),
                    data=request.content or None,
                    allow_redirects=False,
                    proxy=self.proxy,
                    timeout=aiohttp.ClientTimeout(connect=timeout.get("pool"), sock_connect=timeout.get("connect")),
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _httpx_error(error) from error
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self.session.close()
        # aiohttp closes its connections' transports on the next loop iterations.
        await asyncio.sleep(0)
