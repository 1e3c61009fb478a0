"""Waiting: client-side pacing, and waits that end early when the client closes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["Pacer", "unless_set"]


class Pacer:
    """Spaces requests evenly, ``1 / rate`` seconds apart, across all callers.

    Each caller reserves the next free slot at once (no lock: the event loop
    runs one coroutine at a time) and then sleeps until it comes.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next_slot = 0.0

    def reserve(self, now: float, latest: float | None) -> float | None:
        """Reserve the next free slot; return how long to wait for it.

        Args:
            now: The loop's current time.
            latest: The latest loop time the caller can use a slot at, or
                ``None`` for no limit.

        Returns:
            Seconds until the reserved slot, or ``None`` when the next free
            slot comes after *latest* (nothing is reserved then).
        """
        slot = max(now, self._next_slot)
        if latest is not None and slot >= latest:
            return None
        self._next_slot = slot + self.interval
        return slot - now


async def unless_set(event: asyncio.Event, waiting: Awaitable[object]) -> bool:
    """Await *waiting*, unless *event* is set first.

    Returns:
        Whether *waiting* finished; ``False`` when *event* won (*waiting* is
        then cancelled).
    """
    work = asyncio.ensure_future(waiting)
    try:
        if not event.is_set():
            stop = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
    finally:
        finished = work.done()
        if not finished:
            work.cancel()
    if finished:
        work.result()  # re-raise what *waiting* raised, if anything
    return finished
