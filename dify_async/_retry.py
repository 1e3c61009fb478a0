"""When and how long to retry.

The first attempt runs on its own, with no retry machinery: a call that
succeeds pays for none of it. Only after a retryable failure does a tenacity
controller take over, with the policy below.

- Retryable: connection errors, timeouts, 408, 429, 500, 502, 503, 504.
- An ``auto_generate`` rename costs an LLM call on the server, so it is retried
  only where the server cannot have started it: the connection was never
  established, or the answer was 408, 429 or 503.
- Waits: full-jitter exponential backoff, capped; a ``Retry-After`` (or
  ``retry-after-ms``) is honoured exactly, unless it is above
  ``max_retry_after``, in which case the error is raised at once.
- A retry whose wait would pass the call's deadline is not made.
- Every error that escapes records the attempts made (``attempts``); each
  retry logs one WARNING line (method, URL, wait, attempt, reason).
- The waits can be interrupted (the client wakes them when it is closed) and
  skipped altogether in tests (:func:`instant_retries`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import attrs
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    DifyError,
    RateLimitError,
)
from ._retry_after import parse_retry_after

__all__ = [
    "NOT_STARTED_STATUSES",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "backoff",
    "call_with_retries",
    "instant_retries",
    "is_retryable",
    "set_instant_retries",
    "unless_set",
]

T = TypeVar("T")

logger: Final = logging.getLogger("dify_async")

RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth another attempt for an idempotent rename."""

NOT_STARTED_STATUSES: Final = frozenset({408, 429, 503})
"""Statuses after which the server cannot have started the work."""

_MAX_EXPONENT: Final = 64  # 2.0**64 seconds is past any cap, and still a float


class _Switch:
    instant = False


_switch = _Switch()


def set_instant_retries(on: bool) -> None:
    """Make retry waits zero (for tests), or restore them.

    The retry decisions stay the same (what is retried, how many times, when
    a ``Retry-After`` is too long): only the sleeping is skipped.
    """
    _switch.instant = on


@contextmanager
def instant_retries() -> Iterator[None]:
    """Skip retry waits inside a ``with`` block (for tests)."""
    before = _switch.instant
    _switch.instant = True
    try:
        yield
    finally:
        _switch.instant = before


@attrs.frozen
class RetryPolicy:
    """The retry settings of one call."""

    max_retries: int
    deadline: float | None
    max_retry_after: float
    backoff_initial: float = 0.5
    backoff_max: float = 8.0


def is_retryable(error: DifyError, *, idempotent: bool) -> bool:
    """Whether another attempt can help, and cannot do harm.

    Args:
        error: What the last attempt ended with.
        idempotent: Whether repeating the request is harmless (an explicit
            name) or may cost another LLM call (``auto_generate``).
    """
    if isinstance(error, APIStatusError):
        statuses = RETRYABLE_STATUSES if idempotent else NOT_STARTED_STATUSES
        return error.status_code in statuses
    if isinstance(error, APIConnectionError):
        return idempotent or not error.request_sent
    return False


def backoff(attempt: int, policy: RetryPolicy) -> float:
    """Full-jitter exponential backoff after failed attempt number *attempt*.

    A uniform draw from ``[0, min(backoff_max, backoff_initial * 2 ** (attempt
    - 1))]``: 0.5 s, 1 s, 2 s, 4 s, then 8 s at most, by default.
    """
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0**exponent)
    return random.uniform(0, ceiling)  # noqa: S311  (jitter, not cryptography)


def _requested_wait(error: BaseException | None) -> float | None:
    if isinstance(error, RateLimitError):
        return error.retry_after
    if isinstance(error, APIStatusError):
        return parse_retry_after(error.headers)
    return None


class _Controller:
    """The tenacity hooks for one call."""

    def __init__(self, policy: RetryPolicy, started: float) -> None:
        self.policy = policy
        self.started = started

    def wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        requested = _requested_wait(error)
        if requested is not None:
            if requested > self.policy.max_retry_after:
                return math.inf  # stop() raises the error at once
            planned = requested
        else:
            planned = backoff(state.attempt_number, self.policy)
        return 0.0 if _switch.instant else planned

    def stop(self, state: RetryCallState) -> bool:
        if state.attempt_number > self.policy.max_retries:
            return True
        if math.isinf(state.upcoming_sleep):
            return True
        if self.policy.deadline is None:
            return False
        elapsed = asyncio.get_running_loop().time() - self.started
        return elapsed + state.upcoming_sleep >= self.policy.deadline

    def before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, DifyError):  # pragma: no cover - never retried
            return
        logger.warning(
            "Retrying %s %s in %.2f s (attempt %d of %d failed: %s)",
            error.method,
            error.url,
            state.upcoming_sleep,
            state.attempt_number,
            self.policy.max_retries + 1,
            _reason(error),
        )


def _reason(error: DifyError) -> str:
    if isinstance(error, APIStatusError):
        code = f" {error.code}" if error.code else ""
        return f"{error.status_code}{code}"
    return f"{type(error).__name__}: {error.message}"


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


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    idempotent: bool,
    started: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    failed: DifyError | None = None,
) -> T:
    """Await *attempt*, retrying it under *policy*.

    Every :class:`DifyError` that escapes has ``attempts`` set to the number of
    attempts made.

    Args:
        attempt: Sends the request once; raises :class:`DifyError` on failure.
        policy: How many retries, how long to wait, the deadline.
        idempotent: Whether the request may be repeated at no cost.
        started: The loop time when the call began (for the deadline).
        sleep: Waits between attempts (the client's returns early when it
            is closed, so the next attempt fails at once).
        failed: What the first attempt ended with, when the caller made it
            itself (so that a call that succeeds never gets here); *attempt*
            then makes the retries only.
    """
    if failed is None:
        try:
            return await attempt()
        except DifyError as error:
            failed = error
    failed.attempts = 1
    if policy.max_retries <= 0 or not is_retryable(failed, idempotent=idempotent):
        raise failed
    first: DifyError | None = failed

    controller = _Controller(policy, started)
    count = 1

    async def replay_then_send() -> T:
        # Tenacity's first attempt is the failure we already have.
        nonlocal first, count
        if first is not None:
            error, first = first, None
            raise error
        count += 1
        try:
            return await attempt()
        except DifyError as error:
            error.attempts = count
            raise

    async def pause(seconds: float) -> None:
        await sleep(seconds)

    retrying = AsyncRetrying(
        stop=controller.stop,
        wait=controller.wait,
        retry=retry_if_exception(
            lambda e: (
                isinstance(e, DifyError) and is_retryable(e, idempotent=idempotent)
            )
        ),
        before_sleep=controller.before_sleep,
        sleep=pause,
        reraise=True,
    )
    return await retrying(replay_then_send)
