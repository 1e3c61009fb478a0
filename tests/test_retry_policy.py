"""The retry policy on its own: what is retried, how long it waits, Retry-After."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from email.utils import formatdate

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from dify_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    CertificateVerificationError,
    ClientClosedError,
    DifyError,
    InternalServerError,
    InvalidRequestError,
    RateLimitError,
    RetryEvent,
)
from dify_async._pacing import unless_set
from dify_async._retry import is_retryable, retry_after_failure
from dify_async._retry_after import parse_retry_after
from dify_async.testing import instant_retries, set_instant_retries

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
URL = f"https://api.dify.ai/v1/conversations/{CID}/name"
NOW = 1_705_407_629.0


def status_error(status: int, headers: dict[str, str] | None = None) -> APIStatusError:
    headers = headers or {}
    if status == 429:
        return RateLimitError(
            "slow down",
            status_code=429,
            code=None,
            headers=headers,
            body=None,
            method="POST",
            url=URL,
        )
    cls = InternalServerError if status >= 500 else APIStatusError
    return cls(
        f"HTTP {status}",
        status_code=status,
        code=None,
        headers=headers,
        body=None,
        method="POST",
        url=URL,
    )


def connection_error(*, sent: bool, timeout: bool = False) -> APIConnectionError:
    cls = APITimeoutError if timeout else APIConnectionError
    return cls("boom", request_sent=sent, method="POST", url=URL)


# -- is_retryable -----------------------------------------------------------------

RETRY_TABLE = [
    # (failure, retried for an explicit name, retried for auto_generate)
    (connection_error(sent=False), True, True),
    (connection_error(sent=False, timeout=True), True, True),
    (connection_error(sent=True), True, False),
    (connection_error(sent=True, timeout=True), True, False),
    (status_error(408), True, True),
    (status_error(429), True, True),
    (status_error(500), True, False),
    (status_error(502), True, False),
    (status_error(503), True, True),
    (status_error(504), True, False),
]


@pytest.mark.parametrize(("error", "explicit", "auto"), RETRY_TABLE)
def test_retry_table(error, explicit, auto):
    """Transient failures are retried; auto_generate only where nothing started."""
    assert is_retryable(error, idempotent=True) is explicit
    assert is_retryable(error, idempotent=False) is auto


@pytest.mark.parametrize(
    "status", [301, 400, 401, 403, 404, 405, 409, 413, 415, 422, 501, 505]
)
def test_other_statuses_are_never_retried(status):
    """Other 4xx, 3xx and unusual 5xx statuses are never retried."""
    error = status_error(status)
    assert not is_retryable(error, idempotent=True)
    assert not is_retryable(error, idempotent=False)


@pytest.mark.parametrize(
    "error",
    [
        CertificateVerificationError("self-signed", request_sent=False),
        ClientClosedError("closed"),
        InvalidRequestError("bad"),
        APIResponseValidationError("x", status_code=200, headers={}, body=None),
        DifyError("anything"),
    ],
)
def test_errors_that_are_not_transient_are_never_retried(error):
    """A closed client, a bad argument or a bad 2xx body is never retried."""
    assert not is_retryable(error, idempotent=True)


# -- Retry-After parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": "0"}, 0.0),
        ({"RETRY-AFTER": " 1.5 "}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": "Tue, 16 Jan 2024 12:20:59 GMT"}, 30.0),
        ({"Retry-After": formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"Retry-After": "Tuesday, 16-Jan-24 12:20:59 GMT"}, 30.0),  # RFC 850
        ({"Retry-After": "Tue Jan 16 12:20:59 2024"}, 30.0),  # asctime
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "1e3"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "\u0663"}, None),  # an Arabic-Indic digit
        ({"Retry-After": "9" * 400}, None),
        ({"retry-after-ms": "9" * 400}, None),
        ({"Retry-After": "Wed, 99 Foo 2015 07:28:00 GMT"}, None),
    ],
)
def test_parse_retry_after(headers, expected):
    """Seconds, milliseconds and HTTP dates are read; garbage reads as None."""
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_reads_aiohttp_headers():
    """Case-insensitive multidicts, as aiohttp gives them, work too."""
    headers = CIMultiDictProxy(CIMultiDict({"RETRY-AFTER-MS": "1500"}))
    assert parse_retry_after(headers) == 1.5


def test_parse_retry_after_uses_the_clock_by_default():
    """Without now=, an HTTP date is measured from the current time."""
    wait = parse_retry_after({"Retry-After": formatdate(time.time() + 100)})
    assert wait is not None
    assert 98 <= wait <= 100


header_values = st.text() | st.from_regex(r"\s*-?[0-9.eE+]{0,400}\s*", fullmatch=True)


@given(
    retry_after=st.none() | header_values,
    retry_after_ms=st.none() | header_values,
    now=st.floats(allow_nan=True, allow_infinity=True) | st.none(),
)
@example(retry_after="Fri, 31 Dec 9999 23:59:59 GMT", retry_after_ms=None, now=None)
@example(retry_after="Mon, 01 Jan 0001 00:00:00 GMT", retry_after_ms=None, now=None)
@example(retry_after="Mon, 01 Jan 2024 00:00:00 +9999", retry_after_ms=None, now=0.0)
def test_parse_retry_after_never_raises(retry_after, retry_after_ms, now):
    """Any header values give None or a finite, non-negative number of seconds."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    wait = parse_retry_after(headers, now=now)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@given(st.integers(0, 10**12))
def test_parse_retry_after_reads_every_delta_seconds(seconds):
    """Every non-negative integer of delta-seconds is read exactly."""
    assert parse_retry_after({"Retry-After": str(seconds)}) == seconds


@given(st.integers(0, 10**6))
def test_parse_retry_after_reads_every_http_date(offset):
    """Every IMF-fixdate is read as the seconds until it."""
    date = formatdate(NOW + offset, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=NOW) == offset


# -- the retry loop ---------------------------------------------------------------


class Script:
    """An attempt function that raises the given errors in turn, then succeeds."""

    def __init__(self, *errors: Callable[[], DifyError]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)()
            raise error
        return "done"


class Sleeps(list[float]):
    """A sleep function that records the waits instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def run(
    script: Script,
    sleeps: Sleeps | None = None,
    *,
    idempotent: bool = True,
    max_retries: int = 2,
    max_retry_after: float | None = 60.0,
    deadline: float | None = None,
    on_retry: Callable[[RetryEvent], object] | None = None,
) -> str:
    """A call as the client makes it: a first attempt, then the retry loop."""
    deadline_at = None
    if deadline is not None:
        deadline_at = asyncio.get_running_loop().time() + deadline
    try:
        return await script()
    except DifyError as error:
        failure = error
    return await retry_after_failure(
        failure,
        script,
        conversation_id=CID,
        idempotent=idempotent,
        max_retries=max_retries,
        max_retry_after=max_retry_after,
        deadline_at=deadline_at,
        on_retry=on_retry,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def a_502() -> DifyError:
    return status_error(502)


async def test_a_first_success_costs_nothing():
    """A call that succeeds at once makes one attempt and never waits."""
    sleeps = Sleeps()
    script = Script()
    assert await run(script, sleeps) == "done"
    assert script.calls == 1
    assert sleeps == []


async def test_retries_until_success():
    """Transient failures are retried until one attempt succeeds."""
    script = Script(a_502, a_502)
    assert await run(script) == "done"
    assert script.calls == 3


async def test_gives_up_after_max_retries_with_attempts_set():
    """After max_retries retries the last error is raised with attempts set."""
    script = Script(*[a_502] * 10)
    with pytest.raises(InternalServerError) as caught:
        await run(script, max_retries=3)
    assert caught.value.attempts == script.calls == 4


@pytest.mark.parametrize("max_retries", [0, 1, 5])
async def test_max_retries_counts_retries_not_attempts(max_retries):
    """max_retries=N means at most N + 1 attempts."""
    script = Script(*[a_502] * 10)
    with pytest.raises(InternalServerError):
        await run(script, max_retries=max_retries)
    assert script.calls == max_retries + 1


async def test_a_non_retryable_error_stops_at_once():
    """A 404 after a 502 is raised at once, with the attempts so far."""
    script = Script(a_502, lambda: status_error(404), a_502)
    with pytest.raises(APIStatusError) as caught:
        await run(script, max_retries=5)
    assert caught.value.status_code == 404
    assert caught.value.attempts == script.calls == 2


async def test_auto_generate_is_not_repeated_after_a_502():
    """A non-idempotent call raises a 502 after one attempt."""
    script = Script(a_502)
    with pytest.raises(InternalServerError) as caught:
        await run(script, idempotent=False)
    assert caught.value.attempts == script.calls == 1


async def test_auto_generate_is_retried_after_a_503_then_stops_at_a_502():
    """A non-idempotent call goes past a 503 but stops at the 502 that follows."""
    script = Script(lambda: status_error(503), a_502)
    with pytest.raises(InternalServerError) as caught:
        await run(script, idempotent=False, max_retries=5)
    assert caught.value.status_code == 502
    assert caught.value.attempts == 2


async def test_backoff_waits_grow_and_stay_capped():
    """Waits between attempts follow capped full-jitter backoff."""
    sleeps = Sleeps()
    await run(Script(*[a_502] * 6), sleeps, max_retries=6)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(sleeps) == 6
    assert all(0 <= w <= c for w, c in zip(sleeps, ceilings, strict=True))


async def test_retry_after_is_waited_exactly():
    """A Retry-After replaces the backoff with exactly the asked wait."""
    sleeps = Sleeps()
    script = Script(
        lambda: status_error(429, {"Retry-After": "3"}),
        lambda: status_error(503, {"retry-after-ms": "1500"}),
    )
    await run(script, sleeps)
    assert sleeps == [3.0, 1.5]


async def test_retry_after_above_the_cap_is_raised_at_once():
    """A Retry-After above max_retry_after raises, without waiting, retry_after set."""
    sleeps = Sleeps()
    script = Script(lambda: status_error(429, {"Retry-After": "61"}))
    with pytest.raises(RateLimitError) as caught:
        await run(script, sleeps)
    assert caught.value.retry_after == 61.0
    assert caught.value.attempts == 1
    assert sleeps == []


async def test_retry_after_at_the_cap_is_waited():
    """A Retry-After equal to max_retry_after is still honoured."""
    sleeps = Sleeps()
    await run(Script(lambda: status_error(429, {"Retry-After": "60"})), sleeps)
    assert sleeps == [60.0]


async def test_no_cap_waits_for_any_retry_after():
    """max_retry_after=None honours even a very long Retry-After."""
    sleeps = Sleeps()
    script = Script(lambda: status_error(429, {"Retry-After": "86400"}))
    await run(script, sleeps, max_retry_after=None)
    assert sleeps == [86400.0]


async def test_backoff_is_fully_jittered():
    """Waits spread over the whole range: no two clients retry in lockstep."""
    sleeps = Sleeps()
    for _ in range(200):
        await run(Script(a_502, a_502, a_502), sleeps, max_retries=3)
    third = sleeps[2::3]
    assert all(0 <= w <= 2.0 for w in third)
    assert min(third) < 0.5
    assert max(third) > 1.5
    assert len(set(third)) > 190


async def test_a_wait_that_would_pass_the_deadline_is_not_made():
    """No retry is made when its wait would end past the deadline."""
    sleeps = Sleeps()
    script = Script(lambda: status_error(429, {"Retry-After": "5"}))
    with pytest.raises(RateLimitError) as caught:
        await run(script, sleeps, deadline=4.0)
    assert caught.value.attempts == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("wait_ms", "retried"), [("850", True), ("950", False), ("999", False)]
)
async def test_a_retry_needs_time_left_after_its_wait(wait_ms, retried):
    """A retry whose wait ends under 0.1 s before the deadline is not made.

    So little time cannot connect and be answered, and the attempt's connect
    timer could not end before its total one: a connection still under way
    at the deadline would be reported as sent.
    """
    sleeps = Sleeps()
    script = Script(lambda: status_error(503, {"retry-after-ms": wait_ms}))
    if retried:
        assert await run(script, sleeps, deadline=1.0) == "done"
        assert sleeps == [int(wait_ms) / 1000]
    else:
        with pytest.raises(InternalServerError) as caught:
            await run(script, sleeps, deadline=1.0)
        assert caught.value.attempts == 1
        assert sleeps == []


async def test_retries_stop_at_the_deadline():
    """Waits planned together never pass the deadline, and really are slept."""
    script = Script(*[lambda: status_error(503, {"retry-after-ms": "20"})] * 1000)
    planned: list[float] = []

    async def sleep(seconds: float) -> None:
        planned.append(seconds)
        await asyncio.sleep(seconds)

    started = time.monotonic()
    deadline_at = asyncio.get_running_loop().time() + 0.3
    with pytest.raises(DifyError) as caught:
        await script()
    with pytest.raises(InternalServerError):
        await retry_after_failure(
            caught.value,
            script,
            conversation_id=CID,
            idempotent=True,
            max_retries=1000,
            max_retry_after=60.0,
            deadline_at=deadline_at,
            sleep=sleep,
        )
    assert sum(planned) < 0.3
    assert sum(planned) - 0.01 <= time.monotonic() - started < 0.3 + 0.25
    assert 1 < script.calls < 1000


async def test_instant_retries_skip_waits_but_not_decisions():
    """instant_retries() zeroes waits, yet a too-long Retry-After still raises."""
    sleeps = Sleeps()
    with instant_retries():
        await run(
            Script(a_502, lambda: status_error(429, {"Retry-After": "9"})), sleeps
        )
        with pytest.raises(RateLimitError):
            await run(Script(lambda: status_error(429, {"Retry-After": "99"})), sleeps)
    assert sleeps == [0.0, 0.0]


async def test_instant_retries_restores_the_global_switch():
    """set_instant_retries() holds until undone; instant_retries() restores it."""
    sleeps = Sleeps()

    def slow() -> DifyError:
        return status_error(503, {"Retry-After": "30"})

    try:
        set_instant_retries(True)
        with instant_retries():
            pass
        await run(Script(slow), sleeps)
        set_instant_retries(False)
        await run(Script(slow), sleeps)
        with instant_retries():
            await run(Script(slow), sleeps)
        await run(Script(slow), sleeps)
    finally:
        set_instant_retries(False)
    assert sleeps[0] == 0.0
    assert sleeps[1] > 0.0
    assert sleeps[2] == 0.0
    assert sleeps[3] > 0.0


async def test_each_retry_logs_one_warning(caplog):
    """One WARNING per retry, with the method, URL, attempt, wait and reason."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    script = Script(
        lambda: status_error(429, {"Retry-After": "2"}),
        lambda: connection_error(sent=False),
    )
    await run(script)
    lines = [r.getMessage() for r in caplog.records]
    second_wait = lines[1].split(" in ")[1].split()[0]
    assert lines == [
        f"Retrying POST {URL} in 2.00 s (attempt 1 of 3 failed: 429)",
        (
            f"Retrying POST {URL} in {second_wait} s "
            "(attempt 2 of 3 failed: connection error)"
        ),
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_a_dify_code_shows_in_the_log(caplog):
    """The log line names Dify's error code when there is one."""
    caplog.set_level(logging.WARNING, logger="dify_async")

    def unknown() -> DifyError:
        return InternalServerError(
            "Internal Server Error",
            status_code=500,
            code="unknown",
            headers={},
            body=None,
            method="POST",
            url=URL,
        )

    await run(Script(unknown, lambda: status_error(503)))
    assert caplog.messages[0].endswith("(attempt 1 of 3 failed: 500 unknown)")
    assert caplog.messages[1].endswith("(attempt 2 of 3 failed: 503)")


# -- on_retry -----------------------------------------------------------------


async def test_on_retry_gets_one_event_per_retry_before_its_wait():
    """The hook sees each failed attempt, its error and the wait that follows."""
    events: list[RetryEvent] = []
    sleeps = Sleeps()
    first, second = status_error(429, {"Retry-After": "2"}), a_502()
    script = Script(lambda: first, lambda: second)
    assert await run(script, sleeps, on_retry=events.append) == "done"
    assert events == [
        RetryEvent(1, first, 2.0, "POST", URL, CID),
        RetryEvent(2, second, sleeps[1], "POST", URL, CID),
    ]


async def test_on_retry_may_be_async():
    """An async hook is awaited before the wait."""
    seen: list[int] = []

    async def hook(event: RetryEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.attempt)

    await run(Script(a_502, a_502), on_retry=hook)
    assert seen == [1, 2]


async def test_a_broken_on_retry_hook_is_logged_and_ignored(caplog):
    """A hook that raises is logged at ERROR; the call still succeeds."""

    def hook(event: RetryEvent) -> None:
        raise ZeroDivisionError

    script = Script(a_502)
    assert await run(script, on_retry=hook) == "done"
    assert script.calls == 2
    broken = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(broken) == 1
    assert broken[0].exc_info is not None
    assert broken[0].exc_info[0] is ZeroDivisionError


async def test_no_event_when_nothing_is_retried():
    """A first success, or an error that is not retried, calls no hook."""
    events: list[RetryEvent] = []
    await run(Script(), on_retry=events.append)
    with pytest.raises(APIStatusError):
        await run(Script(lambda: status_error(404)), on_retry=events.append)
    assert events == []


# -- waiting unless closed --------------------------------------------------------


async def test_unless_set_returns_true_when_the_wait_finishes():
    """The awaited thing finishing first gives True."""
    assert await unless_set(asyncio.Event(), asyncio.sleep(0.01)) is True


async def test_unless_set_stops_early_when_the_event_is_set():
    """Setting the event ends the wait at once and cancels what was awaited."""
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, event.set)
    started = time.monotonic()
    assert await unless_set(event, asyncio.sleep(10)) is False
    assert time.monotonic() - started < 1


async def test_unless_set_with_the_event_already_set():
    """An event already set means no wait at all."""
    event = asyncio.Event()
    event.set()
    assert await unless_set(event, asyncio.sleep(10)) is False


async def test_unless_set_reraises_what_the_wait_raised():
    """An exception from the awaited thing propagates."""

    async def fail() -> None:
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        await unless_set(asyncio.Event(), fail())


async def test_unless_set_cancelled_cancels_the_wait():
    """Cancelling the waiter cancels what it awaited too."""
    inner_cancelled = asyncio.Event()

    async def wait_forever() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    task = asyncio.create_task(unless_set(asyncio.Event(), wait_forever()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(inner_cancelled.wait(), 1)
