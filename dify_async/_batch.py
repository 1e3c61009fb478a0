"""Running many renames with bounded concurrency.

Both forms run a fixed pool of *concurrency* worker tasks that pull requests
from the input one at a time, so neither the number of tasks nor the memory
held grows with the input:

- :func:`rename_many` takes a finite iterable and returns every outcome in
  input order;
- :func:`rename_stream` takes any iterable or async iterable, possibly
  endless, and yields ``(request, outcome)`` pairs as they finish.

An outcome is the :class:`Conversation`, or the :class:`DifyError` that
request ended with: one failure never stops the others. Anything else that
escapes (cancellation of the whole batch, an exception raised by a progress
callback or by the input iterator) cancels the workers still running and waits
for them, so no task and no connection is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Any, Generic, TypeVar, cast

from ._exceptions import DifyError, InvalidRequestError
from ._models import Conversation, RenameRequest
from ._validation import check_count

__all__ = [
    "Outcome",
    "ProgressCallback",
    "rename_many",
    "rename_stream",
]

T = TypeVar("T")

Outcome = Conversation | DifyError
"""What one rename of a batch ended with."""

Rename = Callable[[RenameRequest], Awaitable[Conversation]]

ProgressCallback = Callable[[int, int], object]
"""Called as ``callback(done, total)`` after each rename of a batch."""


async def _outcome(rename: Rename, request: RenameRequest) -> Outcome:
    """Rename one request; return what it ended with, whatever that is.

    A :class:`DifyError` is the outcome; so is any other exception, wrapped in
    one with the original as its ``__cause__``, so that one request's surprise
    never costs the others theirs. Cancellation propagates.
    """
    try:
        return await rename(request)
    except DifyError as error:
        return error
    except Exception as exc:  # noqa: BLE001  (each request gets one outcome)
        wrapped = DifyError(
            f"the rename failed unexpectedly ({type(exc).__name__}); "
            "see __cause__, and please report it"
        )
        wrapped.__cause__ = exc
        return wrapped


class _Source(Generic[T]):
    """Hands out the items of a sync or async iterable to concurrent workers.

    An exception raised by the iterable ends the input: it is kept in
    :attr:`error`, and the workers see the end of the input, so that the
    requests already started can finish and be reported before it is raised.
    """

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._sync: Iterator[T] | None = None
        self._async: AsyncIterator[T] | None = None
        self._lock = asyncio.Lock()
        self.error: BaseException | None = None
        if isinstance(items, AsyncIterable):
            self._async = aiter(items)
        elif isinstance(items, Iterable):
            self._sync = iter(items)
        else:
            raise InvalidRequestError(
                "requests must be an iterable or an async iterable of "
                f"RenameRequest, got {type(items).__name__}"
            )

    @property
    def is_sync(self) -> bool:
        """Whether the input is a plain iterable (see :meth:`next_now`)."""
        return self._sync is not None

    def next_now(self) -> T:
        """:meth:`next` for a plain iterable, without a coroutine per item."""
        assert self._sync is not None  # noqa: S101
        return self._next_sync(self._sync)

    async def next(self) -> T:
        """Return the next item; raise StopAsyncIteration at the end.

        For a plain iterable, :meth:`next_now` does the same without a
        coroutine.
        """
        if self._sync is not None:
            return self.next_now()
        # An async iterator may not be advanced by two tasks at once.
        async with self._lock:
            if self.error is not None or self._async is None:
                raise StopAsyncIteration
            try:
                return await anext(self._async)
            except StopAsyncIteration:
                raise
            except Exception as exc:  # noqa: BLE001  (raised after the batch)
                self.error = exc
                raise StopAsyncIteration from None

    def _next_sync(self, items: Iterator[T]) -> T:
        if self.error is not None:
            raise StopAsyncIteration
        try:
            return next(items)
        except StopIteration:
            raise StopAsyncIteration from None
        except Exception as exc:  # noqa: BLE001  (raised after the batch)
            self.error = exc
            raise StopAsyncIteration from None


async def _pool(
    source: _Source[T], concurrency: int, handle: Callable[[T], Awaitable[None]]
) -> None:
    """Run *handle* on every item, *concurrency* at a time.

    If anything escapes a handler (a bug, or cancellation of the whole batch),
    every other worker is cancelled and awaited before it propagates, so no
    task is left behind. An error of the input is raised once the requests
    already started are done.
    """

    async def worker() -> None:
        sync = source.is_sync
        while True:
            try:
                item = source.next_now() if sync else await source.next()
            except StopAsyncIteration:
                return
            await handle(item)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        # Wait for the cancelled workers even if this task is cancelled again
        # meanwhile: leaving them running would leak their connections.
        await _wait_despite_cancellation(asyncio.gather(*tasks, return_exceptions=True))
        raise
    if source.error is not None:
        raise source.error


async def _wait_despite_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait for *future*, even if the waiting task is cancelled meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(future)


def _not_a_request(item: object) -> InvalidRequestError:
    return InvalidRequestError(f"expected a RenameRequest, got {type(item).__name__}")


async def rename_many(
    rename: Rename,
    requests: Iterable[RenameRequest],
    *,
    concurrency: int,
    on_progress: ProgressCallback | None = None,
) -> list[Outcome]:
    """Run every request; return the outcomes in input order.

    Raises:
        InvalidRequestError: *concurrency* is not a positive int, or an item
            is not a :class:`RenameRequest` (nothing is sent then).
    """
    check_count(concurrency, "concurrency", minimum=1)
    if not isinstance(requests, Iterable):
        raise InvalidRequestError(
            "requests must be an iterable of RenameRequest, got "
            f"{type(requests).__name__}"
        )
    items = list(requests)
    for index, item in enumerate(items):
        if not isinstance(item, RenameRequest):
            raise InvalidRequestError(
                f"requests[{index}] is a {type(item).__name__}, not a RenameRequest"
            )
    total = len(items)
    results: list[Outcome | None] = [None] * total
    done = 0

    async def handle(pair: tuple[int, RenameRequest]) -> None:
        nonlocal done
        index, request = pair
        results[index] = await _outcome(rename, request)
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    if total:
        await _pool(_Source(enumerate(items)), min(concurrency, total), handle)
    return [result for result in results if result is not None]


_DONE = object()


def _queueing(
    rename: Rename, queue: asyncio.Queue[object]
) -> Callable[[object], Awaitable[None]]:
    """A handler that renames one item and queues ``(item, outcome)``."""

    async def handle(request: object) -> None:
        outcome: Outcome
        if not isinstance(request, RenameRequest):
            outcome = _not_a_request(request)
        else:
            outcome = await _outcome(rename, request)
        # As ``await queue.put(...)``, without its coroutine when there is room.
        if queue.full():
            await queue.put((request, outcome))
        else:
            queue.put_nowait((request, outcome))

    return handle


def rename_stream(
    rename: Rename,
    requests: Iterable[RenameRequest] | AsyncIterable[RenameRequest],
    *,
    concurrency: int,
) -> AsyncGenerator[tuple[RenameRequest, Outcome], None]:
    """Yield ``(request, outcome)`` pairs as they finish.

    The arguments are checked at once; the work starts when the first pair is
    asked for. At most *concurrency* requests are in flight, and at most
    *concurrency* finished outcomes wait for the consumer, so memory does not
    grow with the input. Closing the generator (``aclose()``, or leaving an
    ``async with contextlib.aclosing(...)`` block) cancels the requests still
    in flight and waits for them.

    Raises:
        InvalidRequestError: *concurrency* is not a positive int, or
            *requests* is not iterable.
    """
    check_count(concurrency, "concurrency", minimum=1)
    if isinstance(requests, str | bytes):
        raise InvalidRequestError(
            "requests must be an iterable or an async iterable of RenameRequest, "
            f"got {type(requests).__name__}"
        )
    return _stream(rename, _Source(requests), concurrency)


async def _stream(
    rename: Rename, source: _Source[RenameRequest], concurrency: int
) -> AsyncGenerator[tuple[RenameRequest, Outcome], None]:
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=concurrency)
    handle = _queueing(rename, queue)

    async def produce() -> None:
        try:
            await _pool(source, concurrency, handle)
        except asyncio.CancelledError:
            raise  # the consumer went away: nobody waits for the marker
        except BaseException:
            await queue.put(_DONE)
            raise
        await queue.put(_DONE)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            # As ``await queue.get()``, without its coroutine when one is ready.
            item = await queue.get() if queue.empty() else queue.get_nowait()
            if item is _DONE:
                break
            yield cast("tuple[RenameRequest, Outcome]", item)
        await producer  # re-raise what ended the producer, if anything
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
