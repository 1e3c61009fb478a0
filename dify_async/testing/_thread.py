"""Serve from a background thread: an event loop of its own, for sync callers.

:class:`LoopThread` runs a server's ``start`` coroutine on a new event loop in
a daemon thread, keeps the loop running until asked to stop, then runs the
server's ``stop`` coroutine there. Failures on either side are handed back to
the thread that asked.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["LoopThread"]


class LoopThread:
    """A daemon thread that serves between a start and a stop coroutine.

    Args:
        name: The thread's name.
        start: Starts serving on the thread's loop.
        stop: Stops serving; it runs on the thread's loop too.
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
    ) -> None:
        self._start = start
        self._stop = stop
        self._failures: list[BaseException] = []
        self._stopper: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def is_current(self) -> bool:
        """Whether the caller runs in this thread."""
        return self._thread is threading.current_thread()

    def run(self) -> None:
        """Start the thread and return once *start* has finished.

        Raises:
            BaseException: Whatever *start* raised (the thread has then ended).
        """
        self._thread.start()
        self._ready.wait()
        if self._failures:
            self._thread.join()
            raise self._failures.pop()

    def stop(self) -> None:
        """Run *stop* on the thread's loop and wait for the thread to end.

        Raises:
            BaseException: Whatever *stop* raised.
        """
        stopper = self._stopper
        if stopper is not None and self._thread.is_alive():
            loop, stop_requested = stopper
            loop.call_soon_threadsafe(stop_requested.set)
        self._thread.join()
        if self._failures:
            raise self._failures.pop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001  (handed to the caller)
            self._failures.append(exc)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        stop_requested = asyncio.Event()
        self._stopper = (asyncio.get_running_loop(), stop_requested)
        await self._start()
        self._ready.set()
        try:
            await stop_requested.wait()
        finally:
            await self._stop()
