"""Signals: SIGINT and SIGTERM as a clean cancellation of the running command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import cast

__all__ = ["signals_cancel"]


@contextlib.contextmanager
def signals_cancel(on_signal: Callable[[int], object]) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a clean cancellation of the current task.

    The handlers go through the event loop (``add_signal_handler``), so a
    signal wakes it at once, whichever thread the system delivered it to.

    Args:
        on_signal: Called with the first signal's number, before the task is
            cancelled; a second signal changes nothing.

    Yields:
        Nothing; the handlers are removed on exit.
    """
    loop = asyncio.get_running_loop()
    task = cast("asyncio.Task[object]", asyncio.current_task())
    installed: list[signal.Signals] = []
    received: list[int] = []

    def interrupt(signum: signal.Signals) -> None:
        if not received:
            received.append(int(signum))
            on_signal(int(signum))
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, interrupt, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            continue  # not the main thread, or a platform without them
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
