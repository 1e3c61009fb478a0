"""AsyncDifyClient: settings, lifecycle, and the one call path."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Final

import aiohttp

from ._batch import rename_many, rename_stream
from ._exceptions import ClientClosedError, DifyError, InvalidRequestError
from ._models import Conversation, RenameRequest
from ._retry import RetryEvent, retry_after_failure
from ._sansio import build_request, make_endpoint
from ._settings import DEFAULT_MAX_RESPONSE_SIZE, UNSET, Settings, Unset
from ._transport import DEFAULT_TIMEOUT, Transport
from ._validation import DEFAULT_BASE_URL

__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_TIMEOUT",
    "AsyncDifyClient",
]

logger: Final = logging.getLogger("dify_async")


class AsyncDifyClient:
    """An async client for the Dify Service API's conversation rename.

    Use it as an async context manager, or call :meth:`close` yourself::

        async with AsyncDifyClient(api_key="app-...") as client:
            conversation = await client.rename_conversation(
                conversation_id, name="Trip plans", user="user-42"
            )

    A client belongs to the event loop its session was made in: make one per
    event loop (using it from another raises :class:`EventLoopError`).

    Args:
        api_key: The app's API key (``app-...``). Defaults to the
            ``DIFY_API_KEY`` environment variable. Never shown in reprs, logs
            or errors, and redacted from server text that errors keep.
        base_url: The Service API's base URL, ``/v1`` included. Defaults to
            ``DIFY_BASE_URL``, then to ``https://api.dify.ai/v1``.
        timeout: Per attempt: seconds, or an :class:`aiohttp.ClientTimeout`.
            The default, :data:`DEFAULT_TIMEOUT`, allows 60 s per attempt and
            10 s to connect.
        deadline: Seconds for a whole call, every attempt and wait included
            (for a connection, for ``max_rate``, between retries), or
            ``None`` for no overall limit.
        max_retries: Retries after the first attempt, for transient failures.
        max_retry_after: The longest ``Retry-After`` the client will wait for;
            a longer one raises the error (a :class:`RateLimitError` for a
            429) at once. ``None`` waits for any value.
        max_rate: Requests per second at most, across every call of this
            client (retries included), or ``None`` for no pacing.
        connection_limit: Open connections at most, for a session the client
            makes itself (``0`` means no limit).
        max_response_size: Bytes of a response body the client will read,
            counted after decompression; 8 MiB by default.
        session: An :class:`aiohttp.ClientSession` to use. It is borrowed:
            the client never closes it. It must not carry credentials of its
            own (``auth=``, an ``Authorization`` header); its ``User-Agent``
            is kept, with the library's appended. Without one, the client
            makes its own inside the running event loop (ignoring proxy
            environment variables) and closes it on :meth:`close`.
        on_retry: Called before each retry wait with a :class:`RetryEvent`;
            a plain or async callable. An exception it raises is logged and
            does not break the call.

    Raises:
        InvalidRequestError: no API key, a setting out of range, or a borrowed
            session with credentials of its own.
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
        on_retry: Callable[[RetryEvent], object] | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get("DIFY_API_KEY")
            if not api_key:  # unset or empty: as DIFY_BASE_URL below
                raise InvalidRequestError(
                    "no API key: pass api_key= or set DIFY_API_KEY"
                )
        if base_url is None:
            base_url = os.environ.get("DIFY_BASE_URL") or DEFAULT_BASE_URL
        self._settings = Settings(
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            max_retry_after=max_retry_after,
            on_retry=on_retry,
            api_key=api_key,
            base_url=base_url,
            max_rate=max_rate,
            connection_limit=connection_limit,
            max_response_size=max_response_size,
        )
        settings = self._settings
        self._transport = Transport(
            session=session,
            connection_limit=settings.connection_limit,
            max_rate=settings.max_rate,
            max_response_size=settings.max_response_size,
        )
        self._endpoint = make_endpoint(
            settings.base_url, settings.api_key, self._transport.user_agent
        )
        self._owns_transport = True
        self._closed = False

    @property
    def base_url(self) -> str:
        """The base URL requests go to, without a trailing slash."""
        return self._settings.base_url

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called.

        For a view made by :meth:`with_options`: on it, or on its client.
        """
        return self._closed or self._transport.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncDifyClient base_url={self.base_url!r} {state}>"

    async def __aenter__(self) -> AsyncDifyClient:  # noqa: PYI034  (no Self on 3.10)
        self._ensure_usable()
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
        again does nothing. Closing a view made by :meth:`with_options` ends
        the view only: the session stays open for the client it came from.
        """
        self._closed = True
        if self._owns_transport:
            await self._transport.close()

    def with_options(
        self,
        *,
        timeout: float | aiohttp.ClientTimeout | Unset = UNSET,
        deadline: float | Unset | None = UNSET,
        max_retries: int | Unset = UNSET,
        max_retry_after: float | Unset | None = UNSET,
        on_retry: Callable[[RetryEvent], object] | Unset | None = UNSET,
    ) -> AsyncDifyClient:
        """Return a view of this client with other per-call settings.

        The view shares this client's session, connection pool and
        ``max_rate`` pacing; closing it does not close them. An argument left
        out keeps this client's value::

            patient = client.with_options(deadline=300, max_retries=8)
            await patient.rename_conversation(cid, name="Trip plans", user="u-1")

        Raises:
            InvalidRequestError: a setting out of range.
        """
        view = copy.copy(self)
        view._settings = self._settings.override(  # noqa: SLF001  (same class)
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            max_retry_after=max_retry_after,
            on_retry=on_retry,
        )
        view._owns_transport = False  # noqa: SLF001
        view._closed = False  # noqa: SLF001
        return view

    async def rename_conversation(
        self,
        conversation_id: str | uuid.UUID,
        *,
        user: str,
        name: str | None = None,
        auto_generate: bool = False,
        timeout: float | aiohttp.ClientTimeout | Unset = UNSET,
        deadline: float | Unset | None = UNSET,
        max_retries: int | Unset = UNSET,
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
            timeout: Per attempt; left out, the client's.
            deadline: For the whole call; left out, the client's; ``None``
                for no deadline.
            max_retries: Left out, the client's.

        Returns:
            The conversation as the server stored it.

        Raises:
            InvalidRequestError: an argument the server would refuse; nothing
                was sent.
            APIStatusError: the server's error (a subclass per status).
            APIConnectionError: no usable answer came back.
            APIResponseValidationError: a success whose body is not the
                conversation.
            ClientClosedError: the client is closed.
            EventLoopError: the client belongs to another event loop.
        """
        request = RenameRequest(conversation_id, user, name, auto_generate)
        settings = self._settings
        if timeout is not UNSET or deadline is not UNSET or max_retries is not UNSET:
            settings = settings.override(
                timeout=timeout, deadline=deadline, max_retries=max_retries
            )
        return await self._call(request, settings)

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
            never stops the others; an unexpected exception becomes a
            :class:`DifyError` for that request, with the original as its
            ``__cause__``.

        Raises:
            InvalidRequestError: an item is not a :class:`RenameRequest`, or
                *concurrency* is not a positive int (before anything is sent).
            ClientClosedError: the client is closed.
            EventLoopError: the client belongs to another event loop.
        """
        self._ensure_usable()
        return await rename_many(
            self._renamer(), requests, concurrency=concurrency, on_progress=on_progress
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
        return rename_stream(self._renamer(), requests, concurrency=concurrency)

    def _ensure_usable(self) -> None:
        """Raise unless calls can be made: the one check of "closed" and loop."""
        if self._closed:
            raise ClientClosedError("this AsyncDifyClient is closed")
        self._transport.ensure_usable()

    def _renamer(self) -> Callable[[RenameRequest], Awaitable[Conversation]]:
        """The call path with the client's settings, for one rename of a batch."""
        return functools.partial(self._call, settings=self._settings)

    async def _call(self, request: RenameRequest, settings: Settings) -> Conversation:
        """The one path every rename takes: send, decode, retry."""
        self._ensure_usable()
        prepared = build_request(self._endpoint, request)
        timeout, deadline_at = settings.timeout, None
        if settings.deadline is not None:
            deadline_at = asyncio.get_running_loop().time() + settings.deadline
        try:
            # A first success never touches the retry machinery.
            return await self._transport.send(prepared, timeout, deadline_at)
        except DifyError as error:
            failure = error
        return await retry_after_failure(
            failure,
            functools.partial(self._transport.send, prepared, timeout, deadline_at),
            conversation_id=prepared.conversation_id,
            idempotent=prepared.idempotent,
            max_retries=settings.max_retries,
            max_retry_after=settings.max_retry_after,
            deadline_at=deadline_at,
            on_retry=settings.on_retry,
            sleep=self._transport.sleep,
        )
