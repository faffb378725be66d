"""The HTTP client every remote backend speaks through: JSON requests and server-sent-event streams over a pooled
`httpx.AsyncClient`, with timeouts, retries where they are safe, and errors that say which URL failed and why.

Retries: a request is retried with exponential backoff (``retry_backoff * 2**attempt``, capped, or the server's
``Retry-After``) when the connection could not be made, when the server dropped it before answering, and on
503 / 429 answers. Nothing is retried once a response's body has started to arrive, so a stream that breaks off
mid-way fails at once with `HttpError` instead of repeating what was already delivered.

An `httpx.AsyncClient` belongs to the event loop it first ran on; `HttpClient` keeps one per loop (the
interpreter's loop in practice), created on first use. `close` closes them all.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import httpx

__all__ = ["HttpClient", "HttpConfig", "HttpError"]


@dataclass(frozen=True)
class HttpConfig:
    """Connection settings. ``timeout``: seconds to wait for any response bytes (each chunk of a stream);
    ``connect_timeout``: seconds to open a connection; ``max_retries``: retries after the first attempt;
    ``verify``: TLS verification (True, False or a CA bundle path); ``max_connections``: pool size."""

    timeout: float = 120.0
    connect_timeout: float = 10.0
    max_retries: int = 3
    retry_backoff: float = 0.25
    max_backoff: float = 8.0
    max_connections: int = 512
    verify: bool | str = True


RETRY_STATUSES = frozenset({429, 503})
_RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)


class HttpError(RuntimeError):
    """A request to ``url`` failed: ``status`` is the HTTP status (None when no answer came), ``message`` what the
    server said (or what went wrong on the way)."""

    def __init__(self, url: str, message: str, status: int | None = None):
        where = f"{url} answered {status}" if status is not None else f"request to {url} failed"
        super().__init__(f"{where}: {message}")
        self.url = url
        self.status = status
        self.message = message


def server_message(body: bytes) -> str:
    """The human-readable error in a response body: OpenAI/native ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``, ``{"message"}``, or the text itself (shortened)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "detail", "message"):
            if data.get(key):
                return str(data[key])
    return text[:500]


class HttpClient:
    """Requests to one server (``base_url``); ``api_key`` goes in ``auth_header`` as ``auth_scheme`` + key (an
    empty scheme sends the bare key, as Anthropic's ``x-api-key`` wants). ``headers`` are sent with every request."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        config: HttpConfig = HttpConfig(),
        headers: Mapping[str, str] | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.headers = dict(headers or {})
        if api_key:
            self.headers[auth_header] = f"{auth_scheme} {api_key}".strip()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- requests -------------------------------------------------------------------------------------------------

    async def get_json(self, path: str) -> Any:
        """GET ``path`` and return its JSON body."""
        return await self._json("GET", path, None)

    async def post_json(self, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON to ``path`` and return the JSON body of the answer."""
        return await self._json("POST", path, payload)

    async def post_text(self, path: str, payload: Any = None) -> str:
        """POST ``payload`` (JSON, if any) to ``path`` and return the answer's text (for plain-text routes)."""
        response = await self._send("POST", path, payload, stream=False)
        return response.text

    async def stream_events(self, path: str, payload: Any) -> AsyncIterator[Any]:
        """POST ``payload`` and yield the JSON of each ``data:`` line of the server-sent-event answer until
        ``data: [DONE]`` or the end of the stream. An event carrying ``"error"`` raises `HttpError`."""
        url = self.url(path)
        response = await self._send("POST", path, payload, stream=True)
        try:
            async for line in response.aiter_lines():
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    return
                event = _parse_json(url, data.encode())
                if isinstance(event, dict) and event.get("error"):
                    raise HttpError(url, f"error in stream: {server_message(data.encode())}", response.status_code)
                yield event
        except httpx.TimeoutException as err:
            raise HttpError(url, f"stream stalled: no data for {self.config.timeout:g} s ({_describe(err)})") from err
        except httpx.TransportError as err:
            raise HttpError(url, f"stream broke off: {_describe(err)}") from err
        finally:
            await response.aclose()

    async def _json(self, method: str, path: str, payload: Any) -> Any:
        response = await self._send(method, path, payload, stream=False)
        return _parse_json(self.url(path), response.content)

    async def _send(self, method: str, path: str, payload: Any, *, stream: bool) -> httpx.Response:
        """Send with retries; return a response with a 2xx status (unread when ``stream``) or raise `HttpError`."""
        url = self.url(path)
        client = self._client()
        for attempt in range(self.config.max_retries + 1):
            last_try = attempt == self.config.max_retries
            request = client.build_request(method, url, json=payload)
            try:
                response = await client.send(request, stream=stream)
            except _RETRYABLE_ERRORS as err:
                if last_try:
                    raise HttpError(url, f"{_describe(err)} (after {attempt + 1} attempts)") from err
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            except httpx.TimeoutException as err:
                raise HttpError(url, f"no answer within {self.config.timeout:g} s ({_describe(err)})") from err
            except httpx.TransportError as err:
                raise HttpError(url, _describe(err)) from err
            if response.is_success:
                return response
            body = await _read_error_body(response, url)
            if response.status_code in RETRY_STATUSES and not last_try:
                await asyncio.sleep(self._backoff(attempt, response.headers.get("retry-after")))
                continue
            raise HttpError(url, server_message(body), response.status_code)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.config.retry_backoff * 2**attempt
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.config.max_backoff)

    # -- the per-loop clients ---------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                config = self.config
                client = httpx.AsyncClient(
                    headers=self.headers,
                    timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
                    limits=httpx.Limits(
                        max_connections=config.max_connections, max_keepalive_connections=config.max_connections),
                    verify=config.verify,
                    trust_env=False,
                )
                self._clients[loop] = client
            return client

    async def aclose(self) -> None:
        """Close the client of the running loop."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self, timeout: float = 5.0) -> None:
        """Close every loop's client (from any thread other than those loops'); clients of loops that stopped are
        dropped with them."""
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        for loop, client in clients:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout)
            elif not loop.is_closed():
                loop.run_until_complete(client.aclose())


def _sse_data(line: str) -> str | None:
    """The payload of a ``data:`` line; None for comments, other fields and blank lines."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def _parse_json(url: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        snippet = body[:200].decode("utf-8", errors="replace")
        raise HttpError(url, f"malformed JSON in the answer ({err}): {snippet!r}") from err


async def _read_error_body(response: httpx.Response, url: str) -> bytes:
    try:
        return await response.aread()
    except httpx.TransportError as err:
        raise HttpError(url, f"error body broke off: {_describe(err)}", response.status_code) from err
    finally:
        await response.aclose()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
