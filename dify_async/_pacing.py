"""Client-side pacing: at most N requests per second, shared by every call."""

from __future__ import annotations

import asyncio

__all__ = ["Pacer"]


class Pacer:
    """Spaces requests evenly, ``1 / rate`` seconds apart, across all callers.

    Each caller reserves the next free slot at once (no lock: the event loop
    runs one coroutine at a time) and sleeps until it comes.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next_slot = 0.0

    async def wait(self) -> None:
        """Return when this caller's slot has come."""
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
