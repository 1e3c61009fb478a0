"""The aiohttp client: session ownership, timeouts, the retry loop."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import platform
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Final

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._batch import rename_many, rename_stream
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ClientClosedError,
    DifyError,
    InvalidRequestError,
)
from ._models import Conversation, RenameRequest
from ._pacing import Pacer
from ._retry import RetryPolicy, call_with_retries, unless_set
from ._sansio import (
    DEFAULT_BASE_URL,
    PreparedRequest,
    build_headers,
    build_request,
    decode_response,
    normalize_base_url,
)
from ._validation import check_api_key
from ._version import __version__

__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_TIMEOUT",
    "AsyncDifyClient",
]

_Attempt = tuple[
    aiohttp.ClientSession, PreparedRequest, aiohttp.ClientTimeout, float | None
]
"""What :meth:`AsyncDifyClient._send` takes: session, request, timeout, deadline."""

logger: Final = logging.getLogger("dify_async")

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=60.0, sock_connect=10.0)
"""Per attempt: 60 s in all (Dify Cloud's gateway cuts blocking calls near
60 s, so waiting longer gains nothing), 10 s to connect."""

DEFAULT_MAX_RESPONSE_SIZE: Final = 8 * 1024 * 1024
"""A conversation is a few KiB; a body past 8 MiB is refused unread."""

_USER_AGENT: Final = (
    f"dify-async/{__version__} aiohttp/{aiohttp.__version__} "
    f"Python/{platform.python_version()}"
)


def _to_timeout(value: object, what: str) -> aiohttp.ClientTimeout:
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return aiohttp.ClientTimeout(
            total=float(value), sock_connect=min(float(value), 10.0)
        )
    raise InvalidRequestError(
        f"{what} must be positive seconds or an aiohttp.ClientTimeout, got {value!r}"
    )


def _check_positive(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise InvalidRequestError(f"{what} must be positive seconds or None, got {value!r}")


def _check_retries(value: object) -> int:
    if type(value) is int and value >= 0:
        return value
    raise InvalidRequestError(f"max_retries must be an int >= 0, got {value!r}")


def _being_cancelled() -> bool:
    """Whether someone cancelled the current task (unknowable before 3.11)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is not None and cancelling() > 0


def _pool_size(connector: aiohttp.BaseConnector | None, own_limit: int) -> int:
    """How many connections a session can open at once (``0``: no limit)."""
    if connector is None:
        return own_limit
    # Every request goes to one host, so the per-host limit binds too.
    limits = [n for n in (connector.limit, connector.limit_per_host) if n]
    return min(limits, default=0)


def _clip(timeout: aiohttp.ClientTimeout, remaining: float) -> aiohttp.ClientTimeout:
    if timeout.total is not None and timeout.total <= remaining:
        return timeout
    return aiohttp.ClientTimeout(
        total=remaining,
        connect=timeout.connect,
        sock_read=timeout.sock_read,
        sock_connect=timeout.sock_connect,
        ceil_threshold=timeout.ceil_threshold,
    )


async def _read_body(
    response: aiohttp.ClientResponse, limit: int
) -> tuple[bytes, bool]:
    """Read at most *limit* bytes; say whether that was the whole body."""
    length = response.content_length
    if length is not None:
        if length <= limit:
            return await response.read(), True
        return b"", False
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
        chunks.append(chunk)
    return b"".join(chunks), True


class AsyncDifyClient:
    """An async client for the Dify Service API's conversation rename.

    Use it as an async context manager, or call :meth:`close` yourself::

        async with AsyncDifyClient(api_key="app-...") as client:
            conversation = await client.rename_conversation(
                conversation_id, name="Trip plans", user="user-42"
            )

    Args:
        api_key: The app's API key (``app-...``). Defaults to the
            ``DIFY_API_KEY`` environment variable. Never shown in reprs, logs
            or errors.
        base_url: The Service API's base URL, ``/v1`` included. Defaults to
            ``DIFY_BASE_URL``, then to ``https://api.dify.ai/v1``.
        timeout: Per attempt: seconds, or an :class:`aiohttp.ClientTimeout`.
        deadline: Seconds for a whole call, every attempt and wait included,
            or ``None`` for no overall limit. A retry whose wait would pass it
            is not made.
        max_retries: Retries after the first attempt, for transient failures.
        max_retry_after: The longest ``Retry-After`` the client will wait for;
            a longer one raises the error (a :class:`RateLimitError` for a
            429) at once. ``None`` waits for any value.
        max_rate: Requests per second at most, across every call of this
            client (retries included), or ``None`` for no pacing.
        connection_limit: Open connections at most, for a session the client
            makes itself (``0`` means no limit).
        max_response_size: Bytes of a response body the client will read.
        session: An :class:`aiohttp.ClientSession` to use. It is borrowed:
            the client never closes it. Without one, the client makes its own
            inside the running event loop and closes it on :meth:`close`.

    Raises:
        InvalidRequestError: no API key, or a setting out of range.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_retries: int = 2,
        max_retry_after: float | None = 60.0,
        max_rate: float | None = None,
        connection_limit: int = 100,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get("DIFY_API_KEY")
            if api_key is None:
                raise InvalidRequestError(
                    "no API key: pass api_key= or set DIFY_API_KEY"
                )
        check_api_key(api_key)
        if base_url is None:
            base_url = os.environ.get("DIFY_BASE_URL") or DEFAULT_BASE_URL
        self._base_url = normalize_base_url(base_url)
        # The parts of every request's URL but its end, split once: a call
        # builds its URL from them without parsing it again.
        base = URL(self._base_url, encoded=True)
        self._url_parts = (base.scheme, base.raw_authority, base.raw_path.rstrip("/"))
        self._timeout = _to_timeout(timeout, "timeout")
        self._policy = RetryPolicy(
            max_retries=_check_retries(max_retries),
            deadline=_check_positive(deadline, "deadline"),
            max_retry_after=math.inf
            if max_retry_after is None
            else _check_positive(max_retry_after, "max_retry_after") or math.inf,
        )
        rate = _check_positive(max_rate, "max_rate")
        self._pacer = Pacer(rate) if rate is not None else None
        if type(connection_limit) is not int or connection_limit < 0:
            raise InvalidRequestError(
                f"connection_limit must be an int >= 0, got {connection_limit!r}"
            )
        self._connection_limit = connection_limit
        if type(max_response_size) is not int or max_response_size < 1:
            raise InvalidRequestError(
                f"max_response_size must be a positive int, got {max_response_size!r}"
            )
        self._max_response_size = max_response_size
        self._headers = build_headers(api_key, _USER_AGENT)
        self._session = session
        self._owns_session = session is None
        slots = _pool_size(session.connector if session else None, connection_limit)
        self._slots = asyncio.Semaphore(slots) if slots else None
        self._closed = False
        self._closing = asyncio.Event()  # wakes calls waiting to retry or to pace

    @property
    def base_url(self) -> str:
        """The base URL requests go to, without a trailing slash."""
        return self._base_url

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncDifyClient base_url={self._base_url!r} {state}>"

    async def __aenter__(self) -> AsyncDifyClient:  # noqa: PYI034  (no Self on 3.10)
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client; close its session too if it made it.

        Calls still in flight end with :class:`ClientClosedError`. Closing
        again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("this AsyncDifyClient is closed")
        session = self._session
        if session is None:
            # Made here, inside the running loop, never at construction.
            # Its default headers are the rename's, so that a call need not
            # merge them into the session's at every request.
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connection_limit),
                headers=self._headers,
            )
        elif session.closed:
            raise ClientClosedError(
                "the aiohttp.ClientSession passed as session= is closed"
            )
        return session

    async def rename_conversation(
        self,
        conversation_id: str | uuid.UUID,
        *,
        user: str,
        name: str | None = None,
        auto_generate: bool = False,
        timeout: float | aiohttp.ClientTimeout | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> Conversation:
        """Rename a conversation, or have the server generate a name for it.

        Args:
            conversation_id: The conversation's UUID (``str`` or
                :class:`uuid.UUID`).
            user: The end-user identifier that owns the conversation.
            name: The new name, stored exactly as given. Required unless
                *auto_generate* is true; at most 255 characters.
            auto_generate: Let the server title the conversation from its
                first message (an LLM call; retried only where the server
                cannot have started it).
            timeout: Per attempt, overriding the client's.
            deadline: For the whole call, overriding the client's.
            max_retries: Overriding the client's.

        Returns:
            The conversation as the server stored it.

        Raises:
            InvalidRequestError: an argument the server would refuse; nothing
                was sent.
            APIStatusError: the server's error (a subclass per status).
            APIConnectionError: no usable answer came back.
            APIResponseValidationError: a success whose body is not a
                conversation.
            ClientClosedError: the client is closed.
        """
        request = RenameRequest(conversation_id, user, name, auto_generate)
        attempt, policy, started = self._prepare(
            request, timeout, deadline, max_retries
        )
        # As _rename_one does, inline: one coroutine fewer for every call.
        try:
            return await self._send(*attempt)
        except DifyError as error:
            return await self._retry(request, error, attempt, policy, started)

    async def rename_many(
        self,
        requests: Iterable[RenameRequest],
        *,
        concurrency: int = 16,
        on_progress: Callable[[int, int], object] | None = None,
    ) -> list[Conversation | DifyError]:
        """Run many renames, at most *concurrency* at a time.

        A fixed pool of *concurrency* workers shares the requests, so a batch
        of any size holds that many connections and tasks at most. Each
        rename keeps the client's retry policy, and ``max_rate`` paces them
        all. Cancelling the call cancels the renames in flight and waits for
        them before the cancellation propagates.

        Args:
            requests: The renames (any finite iterable; it is read at once).
            concurrency: How many run at once.
            on_progress: Called as ``on_progress(done, total)`` after each
                rename ends, whatever its outcome. An exception it raises
                cancels the batch.

        Returns:
            One outcome per request, in input order: the :class:`Conversation`,
            or the :class:`DifyError` that request ended with. One failure
            never stops the others.

        Raises:
            InvalidRequestError: an item is not a :class:`RenameRequest`, or
                *concurrency* is not a positive int (before anything is sent).
        """
        return await rename_many(
            self._rename_one, requests, concurrency=concurrency, on_progress=on_progress
        )

    def rename_stream(
        self,
        requests: Iterable[RenameRequest] | AsyncIterable[RenameRequest],
        *,
        concurrency: int = 16,
    ) -> AsyncGenerator[tuple[RenameRequest, Conversation | DifyError], None]:
        """Rename a stream of requests, yielding each outcome as it finishes.

        The input is read lazily, one request per free worker, and finished
        outcomes wait for the consumer in a queue of *concurrency* places, so
        memory is bounded by *concurrency*, not by the input: it suits inputs
        read from a file or a database cursor, or even endless ones. Close
        the generator to stop early; in-flight calls are then cancelled and
        awaited. ``contextlib.aclosing`` does that for you::

            async with contextlib.aclosing(client.rename_stream(rows)) as results:
                async for request, outcome in results:
                    ...

        If the input itself raises, no new rename starts; the ones in flight
        finish and are yielded, then its exception is raised.

        Args:
            requests: Any iterable or async iterable of renames.
            concurrency: How many run at once.

        Returns:
            An async generator of ``(request, outcome)`` pairs in completion
            order, where outcome is the :class:`Conversation` or the
            :class:`DifyError` that request ended with. An item that is not a
            :class:`RenameRequest` is paired with an
            :class:`InvalidRequestError`.

        Raises:
            InvalidRequestError: *concurrency* is not a positive int, or
                *requests* is not iterable (raised here, before any work).
        """
        return rename_stream(self._rename_one, requests, concurrency=concurrency)

    async def _rename_one(self, request: RenameRequest) -> Conversation:
        attempt, policy, started = self._prepare(request, None, None, None)
        # The first attempt runs here, so that a call that succeeds pays for no
        # retry machinery at all; a failure goes to the retry loop, which sees
        # it as the outcome of its own first attempt.
        try:
            return await self._send(*attempt)
        except DifyError as error:
            return await self._retry(request, error, attempt, policy, started)

    def _prepare(
        self,
        request: RenameRequest,
        timeout: float | aiohttp.ClientTimeout | None,
        deadline: float | None,
        max_retries: int | None,
    ) -> tuple[_Attempt, RetryPolicy, float]:
        """Check the call's settings; return its attempt, policy and start."""
        policy = self._policy
        if deadline is not None or max_retries is not None:
            policy = RetryPolicy(
                max_retries=policy.max_retries
                if max_retries is None
                else _check_retries(max_retries),
                deadline=policy.deadline
                if deadline is None
                else _check_positive(deadline, "deadline"),
                max_retry_after=policy.max_retry_after,
            )
        attempt_timeout = (
            self._timeout if timeout is None else _to_timeout(timeout, "timeout")
        )
        session = self._ensure_session()
        prepared = build_request(self._base_url, self._headers, request)
        started = asyncio.get_running_loop().time()
        deadline_at = None if policy.deadline is None else started + policy.deadline
        return (session, prepared, attempt_timeout, deadline_at), policy, started

    async def _retry(
        self,
        request: RenameRequest,
        failed: DifyError,
        attempt: _Attempt,
        policy: RetryPolicy,
        started: float,
    ) -> Conversation:
        """Hand a failed first attempt to the retry loop."""
        return await call_with_retries(
            lambda: self._send(*attempt),
            policy=policy,
            idempotent=not request.auto_generate,
            started=started,
            sleep=lambda seconds: unless_set(self._closing, asyncio.sleep(seconds)),
            failed=failed,
        )

    async def _send(
        self,
        session: aiohttp.ClientSession,
        prepared: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
        deadline_at: float | None,
    ) -> Conversation:
        """Send once; decode the answer (one coroutine: this is the hot path)."""
        method, url = prepared.method, prepared.url
        if self._pacer is not None or self._closed:
            await self._wait_turn(method, url)
        # Hold one of the pool's connection slots before the attempt's clock
        # starts: with thousands of calls in flight, waiting for a free
        # connection must not count against the per-attempt timeout (nor turn
        # into a timeout that claims the request may have been sent). As
        # ``async with slots``, one coroutine fewer.
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        try:
            timeout = self._attempt_timeout(method, url, timeout, deadline_at)
            try:
                async with session.request(
                    method,
                    # The same URL, from the base URL's parts split once.
                    self._request_url(url),
                    data=prepared.body,
                    # A session of our own sends the rename's headers already.
                    headers=None if self._owns_session else prepared.headers,
                    allow_redirects=False,
                    raise_for_status=False,
                    timeout=timeout,
                ) as response:
                    status = response.status
                    headers = response.headers
                    length, limit = response.content_length, self._max_response_size
                    if length is not None and length <= limit:
                        body, complete = await response.read(), True  # usually
                    else:
                        body, complete = await _read_body(response, limit)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._connection_error(exc, method, url) from exc
            except asyncio.CancelledError:
                closed = self._closed_meanwhile(method, url)
                if closed is None:
                    raise
                raise closed from None
        finally:
            if slots is not None:
                slots.release()
        return self._decode(prepared, status, headers, body, complete=complete)

    def _attempt_timeout(
        self,
        method: str,
        url: str,
        timeout: aiohttp.ClientTimeout,
        deadline_at: float | None,
    ) -> aiohttp.ClientTimeout:
        """The attempt's timeout, clipped to the deadline; raise if too late."""
        if self._closed:  # closed while this call waited for a slot
            raise ClientClosedError(
                "this AsyncDifyClient is closed", method=method, url=url
            )
        if deadline_at is not None:
            remaining = deadline_at - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise APITimeoutError(
                    "the call's deadline passed before this attempt",
                    request_sent=False,
                    method=method,
                    url=url,
                )
            timeout = _clip(timeout, remaining)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", method, url)
        return timeout

    def _closed_meanwhile(self, method: str, url: str) -> ClientClosedError | None:
        """The error for a cancellation that closing the client caused, if so."""
        # Closing the session cancels the calls queued for a connection slot,
        # although nobody cancelled their tasks.
        if not self.closed or _being_cancelled():
            return None
        return ClientClosedError(
            "the client was closed while this call was in flight",
            method=method,
            url=url,
        )

    def _decode(
        self,
        prepared: PreparedRequest,
        status: int,
        headers: CIMultiDictProxy[str],
        body: bytes,
        *,
        complete: bool,
    ) -> Conversation:
        """Turn the answer into a conversation, or raise the right error."""
        method, url = prepared.method, prepared.url
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d", method, url, status)
        if not complete and 200 <= status < 300:  # noqa: PLR2004
            raise APIResponseValidationError(
                f"HTTP {status} with a body larger than max_response_size "
                f"({self._max_response_size} bytes); not read",
                status_code=status,
                headers=headers,
                body=None,
                method=method,
                url=url,
            )
        return decode_response(status, headers, body, method=method, url=url)

    def _request_url(self, url: str) -> URL:
        """*url*, a request URL built from the base URL, as a :class:`URL`."""
        scheme, authority, path = self._url_parts
        return URL.build(
            scheme=scheme,
            authority=authority,
            path=path + url[len(self._base_url) :],
            encoded=True,
        )

    async def _wait_turn(self, method: str, url: str) -> None:
        """Wait for the pacer's slot; raise if the client is (or gets) closed."""
        if self._pacer is not None and not self._closed:
            await unless_set(self._closing, self._pacer.wait())
        if self._closed:
            raise ClientClosedError(
                "this AsyncDifyClient is closed", method=method, url=url
            )

    def _connection_error(
        self, exc: BaseException, method: str, url: str
    ) -> ClientClosedError | APIConnectionError:
        if self._closed:
            return ClientClosedError(
                "the client was closed while this call was in flight",
                method=method,
                url=url,
            )
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return APITimeoutError(
                "timed out connecting to the server",
                request_sent=False,
                method=method,
                url=url,
            )
        if isinstance(exc, asyncio.TimeoutError):
            return APITimeoutError(
                "the server did not answer in time",
                method=method,
                url=url,
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return APIConnectionError(
                f"could not connect: {exc.os_error.strerror or exc.os_error}",
                request_sent=False,
                method=method,
                url=url,
            )
        detail = str(exc) or type(exc).__name__
        return APIConnectionError(
            f"connection failed: {detail}", method=method, url=url
        )
