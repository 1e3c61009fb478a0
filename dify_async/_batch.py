"""Running many renames with bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Generic, TypeVar, cast

from ._exceptions import DifyError, InvalidRequestError
from ._models import Conversation, RenameRequest

__all__ = ["Outcome", "check_concurrency", "rename_many", "rename_stream"]

T = TypeVar("T")

Outcome = Conversation | DifyError
"""What one rename of a batch ended with."""

Rename = Callable[[RenameRequest], Awaitable[Conversation]]


def check_concurrency(concurrency: object) -> int:
    """Return *concurrency* if it is a positive int.

    Raises:
        InvalidRequestError: it is not.
    """
    if type(concurrency) is not int or concurrency < 1:
        raise InvalidRequestError(
            f"concurrency must be a positive int, got {concurrency!r}"
        )
    return concurrency


class _Source(Generic[T]):
    """Hands out items of a sync or async iterable to concurrent workers."""

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._sync: Iterator[T] | None = None
        self._async: AsyncIterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self._async = aiter(items)
            self._lock = asyncio.Lock()
        else:
            self._sync = iter(items)

    async def next(self) -> T:
        """Return the next item; raise StopAsyncIteration at the end."""
        if self._sync is not None:
            try:
                return next(self._sync)
            except StopIteration:
                raise StopAsyncIteration from None
        assert self._async is not None  # noqa: S101
        async with self._lock:
            return await anext(self._async)


async def _pool(
    source: _Source[T], concurrency: int, handle: Callable[[T], Awaitable[None]]
) -> None:
    """Run *handle* on every item, *concurrency* at a time.

    If anything escapes a handler (a bug, or cancellation of the whole batch),
    every other worker is cancelled and awaited before it propagates, so no
    task is left behind.
    """

    async def worker() -> None:
        while True:
            try:
                item = await source.next()
            except StopAsyncIteration:
                return
            await handle(item)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _outcome(rename: Rename, request: object) -> Outcome:
    if not isinstance(request, RenameRequest):
        return InvalidRequestError(
            f"expected a RenameRequest, got {type(request).__name__}"
        )
    try:
        return await rename(request)
    except DifyError as error:
        return error


async def rename_many(
    rename: Rename,
    requests: Iterable[RenameRequest],
    *,
    concurrency: int,
    on_progress: Callable[[int, int], object] | None = None,
) -> list[Outcome]:
    """Run every request; return the outcomes in input order."""
    check_concurrency(concurrency)
    items = list(requests)
    for index, item in enumerate(items):
        if not isinstance(item, RenameRequest):
            raise InvalidRequestError(
                f"requests[{index}] is a {type(item).__name__}, not a RenameRequest"
            )
    results: list[Outcome | None] = [None] * len(items)
    total = len(items)
    done = 0

    async def handle(pair: tuple[int, RenameRequest]) -> None:
        nonlocal done
        index, request = pair
        results[index] = await _outcome(rename, request)
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    await _pool(_Source(enumerate(items)), min(concurrency, total) or 1, handle)
    return results  # type: ignore[return-value]  # every slot is filled


_DONE = object()


async def rename_stream(
    rename: Rename,
    requests: Iterable[RenameRequest] | AsyncIterable[RenameRequest],
    *,
    concurrency: int,
) -> AsyncIterator[tuple[RenameRequest, Outcome]]:
    """Yield ``(request, outcome)`` pairs as they finish.

    At most *concurrency* requests are in flight, and at most *concurrency*
    finished outcomes wait for the consumer, so memory does not grow with the
    input.
    """
    check_concurrency(concurrency)
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=concurrency)

    async def handle(request: RenameRequest) -> None:
        await queue.put((request, await _outcome(rename, request)))

    async def produce() -> None:
        try:
            await _pool(_Source(requests), concurrency, handle)
        except asyncio.CancelledError:
            raise  # the consumer went away; nobody waits for _DONE
        except BaseException:
            await queue.put(_DONE)
            raise
        await queue.put(_DONE)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            yield cast("tuple[RenameRequest, Outcome]", item)
        await producer  # re-raise what ended the producer, if anything
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
