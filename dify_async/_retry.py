"""When and how long to retry, on tenacity's own building blocks.

- Retryable: connection errors, timeouts, 408, 429, 500, 502, 503, 504; never
  a TLS certificate failure (another attempt meets the same certificate).
- An ``auto_generate`` rename costs an LLM call on the server, so it is retried
  only where the server cannot have started it: the connection was never
  established, or the answer was 408, 429 or 503.
- Waits: full-jitter exponential backoff (tenacity's
  ``wait_random_exponential``: up to 0.5 s, 1 s, 2 s, 4 s, then 8 s), unless
  the answer carried ``Retry-After`` (or ``retry-after-ms``), which is honoured
  exactly; one above ``max_retry_after`` is not waited for: the error is
  raised at once.
- Stops: ``stop_after_attempt`` (``max_retries`` + 1 attempts), and
  ``stop_before_delay`` for the call's deadline (a retry whose wait would end
  past it, or less than :data:`MIN_TIME_LEFT` before it, is not made).
- Before each retry wait: one WARNING log line and the ``on_retry`` hook, with
  a :class:`RetryEvent`. Every error that escapes records ``attempts``.

The first attempt runs on its own, in the client's call path: a call that
succeeds at once pays nothing for the retry machinery. A failure goes to
:func:`retry_after_failure`, which starts a tenacity loop whose state opens
with that failure as its first attempt's outcome.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar, cast

import attrs
from tenacity import (
    AsyncRetrying,
    DoSleep,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    CertificateVerificationError,
    DifyError,
)
from ._retry_after import parse_retry_after

__all__ = [
    "BACKOFF",
    "MIN_TIME_LEFT",
    "NOT_STARTED_STATUSES",
    "RETRYABLE_STATUSES",
    "RetryEvent",
    "instant_retries",
    "is_retryable",
    "requested_wait",
    "retry_after_failure",
    "set_instant_retries",
    "wait_retry_after",
]

T = TypeVar("T")

logger: Final = logging.getLogger("dify_async")

RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth another attempt for an idempotent rename."""

NOT_STARTED_STATUSES: Final = frozenset({408, 429, 503})
"""Statuses after which the server cannot have started the work."""

BACKOFF: Final = wait_random_exponential(multiplier=0.5, max=8.0)
"""Full jitter: a uniform draw from 0 to 0.5 s, 1 s, 2 s, 4 s, then 8 s."""

MIN_TIME_LEFT: Final = 0.1
"""Seconds of the call's deadline a retry must still have when its wait ends.

Less is too little to connect and be answered; and an attempt's connect
timer needs 50 ms before the deadline to end first, so that a connection
still under way at the deadline is reported as never sent."""


class _Switch:
    instant = False


_switch = _Switch()


def set_instant_retries(on: bool) -> None:
    """Make retry waits zero (for tests), or restore them.

    The retry decisions stay the same (what is retried, how many times, when
    a ``Retry-After`` is too long): only the waiting is skipped.
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
class RetryEvent:
    """What ``on_retry`` is given before each retry wait.

    Attributes:
        attempt: The number of the attempt that failed, from 1.
        error: What that attempt ended with.
        wait: Seconds until the next attempt.
        method: The request's HTTP method.
        url: The request's URL (it never holds a secret).
        conversation_id: The conversation being renamed (canonical form).
    """

    attempt: int
    error: DifyError
    wait: float
    method: str
    url: str
    conversation_id: str


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
    if isinstance(error, CertificateVerificationError):
        return False
    if isinstance(error, APIConnectionError):
        return idempotent or not error.request_sent
    return False


def requested_wait(error: BaseException | None) -> float | None:
    """The wait an error's response asked for (``Retry-After``), if any."""
    if isinstance(error, APIStatusError):
        return parse_retry_after(error.headers)
    return None


class wait_retry_after(wait_base):  # noqa: N801  (named as tenacity's waits are)
    """Wait what the failed attempt's ``Retry-After`` asked for, else *fallback*.

    Zero inside :func:`instant_retries`.
    """

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        if _switch.instant:
            return 0.0
        outcome = retry_state.outcome
        requested = requested_wait(outcome.exception() if outcome else None)
        return self.fallback(retry_state) if requested is None else requested


def _too_long(error: DifyError, max_retry_after: float | None) -> bool:
    if max_retry_after is None:
        return False
    requested = requested_wait(error)
    return requested is not None and requested > max_retry_after


async def retry_after_failure(
    failure: DifyError,
    send: Callable[[], Awaitable[T]],
    *,
    conversation_id: str,
    idempotent: bool,
    max_retries: int,
    max_retry_after: float | None,
    deadline_at: float | None,
    on_retry: Callable[[RetryEvent], object] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Go on with a call whose first attempt failed: retry it or give up.

    The caller makes the first attempt itself, so that a call that succeeds
    at once never builds any retry machinery. Every :class:`DifyError` that
    escapes has ``attempts`` set.

    Args:
        failure: What the first attempt ended with.
        send: Sends the request once; raises :class:`DifyError` on failure.
        conversation_id: For the :class:`RetryEvent`.
        idempotent: Whether the request may be repeated at no cost.
        max_retries: Retries after the first attempt.
        max_retry_after: The longest ``Retry-After`` worth waiting for
            (``None``: any).
        deadline_at: The loop time by which the call must end, or ``None``.
        on_retry: Called with a :class:`RetryEvent` before each retry wait.
        sleep: Waits between attempts (the client's returns early when it
            is closed, so the next attempt fails at once).
    """
    failure.attempts = 1

    def worth_retrying(error: BaseException) -> bool:
        return (
            isinstance(error, DifyError)
            and is_retryable(error, idempotent=idempotent)
            and not _too_long(error, max_retry_after)
        )

    async def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, DifyError)  # noqa: S101  (only those are retried)
        event = RetryEvent(
            state.attempt_number,
            error,
            state.upcoming_sleep,
            error.method or "POST",
            error.url or "",
            conversation_id,
        )
        await _announce(event, max_retries + 1, on_retry)

    stop: stop_base = stop_after_attempt(max_retries + 1)
    if deadline_at is not None:
        # tenacity's clock starts with the state below, that is now.
        remaining = deadline_at - asyncio.get_running_loop().time()
        stop = stop | stop_before_delay(max(remaining - MIN_TIME_LEFT, 0.0))
    retrying = AsyncRetrying(
        stop=stop,
        wait=wait_retry_after(BACKOFF),
        retry=retry_if_exception(worth_retrying),
        before_sleep=before_sleep,
        reraise=True,
    )
    retrying.begin()
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.set_exception((type(failure), failure, failure.__traceback__))
    while True:
        # tenacity decides: raise the last error, return the result, or sleep.
        action = await retrying.iter(retry_state=state)
        if not isinstance(action, DoSleep):
            return cast("T", action)
        state.prepare_for_next_attempt()
        await sleep(action)
        try:
            state.set_result(await send())
        except DifyError as error:
            error.attempts = state.attempt_number
            state.set_exception((type(error), error, error.__traceback__))


async def _announce(
    event: RetryEvent, attempts: int, on_retry: Callable[[RetryEvent], object] | None
) -> None:
    """Log one WARNING line for a retry, and call the user's hook."""
    logger.warning(
        "Retrying %s %s in %.2f s (attempt %d of %d failed: %s)",
        event.method,
        event.url,
        event.wait,
        event.attempt,
        attempts,
        event.error.label,
    )
    if on_retry is None:
        return
    try:
        result = on_retry(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_retry hook raised; the call goes on")
