"""``deadline`` bounds every wait of a call: slots, pacing, Retry-After, reads.

Each test proves the promise a user relies on: a call given ``deadline=D``
ends within ``D`` plus 10 % (plus a small absolute slack for a loaded 2-core
machine), with :class:`APITimeoutError`, whatever the server does. Every wait
in the test itself has a limit too, so a client that breaks the promise fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest
from faulty_servers import CID, Connection, Request, hang, ok, refused_base_url, trickle
from hostile_servers import HostileServer, slow
from hypothesis import example, given
from hypothesis import strategies as st

from dify_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    Conversation,
    InternalServerError,
    RateLimitError,
)
from dify_async._transport import _clip

KEY = "app-hostile-deadlines-key"
USER = "user-42"
SLACK = 0.15
"""Absolute seconds allowed past deadline + 10 % on a loaded 2-core machine."""
GRACE = 3.0
"""How long past its deadline the test waits before calling the client hung."""


def bound(deadline: float) -> float:
    """The latest a call with *deadline* may end: deadline + 10 % + slack."""
    return deadline * 1.1 + SLACK


async def timed(
    client: Any, deadline: float | None, **kwargs: Any
) -> tuple[Conversation | BaseException, float]:
    """Rename; return the outcome (or the exception) and the seconds it took.

    *client* is a client or a :meth:`AsyncDifyClient.with_options` view.
    """
    if not kwargs.get("auto_generate"):
        kwargs.setdefault("name", "Trip plans")
    if deadline is not None:
        kwargs["deadline"] = deadline
    limit = (deadline or 5.0) + GRACE
    started = time.monotonic()
    try:
        call = client.rename_conversation(CID, user=USER, **kwargs)
        outcome: Conversation | BaseException = await asyncio.wait_for(call, limit)
    except Exception as error:  # the outcome under test, whatever it is
        outcome = error
    return outcome, time.monotonic() - started


async def wait_for_requests(server: HostileServer, count: int) -> None:
    """Return once *count* requests reached *server* (3 s at most)."""
    for _ in range(300):
        if server.attempts >= count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the server saw {server.attempts} requests, not {count}")


# -- (a) waiting for a connection slot --------------------------------------------


async def test_waiting_for_the_only_connection_is_bounded_by_the_deadline(new_client):
    """connection_limit=1, the slot held 5 s: a deadline=1 call ends in ~1 s unsent."""
    async with HostileServer(slow(5.0), ok) as server:
        client = new_client(server.base_url, connection_limit=1)
        holder = asyncio.create_task(timed(client, None))
        try:
            await wait_for_requests(server, 1)
            outcome, elapsed = await timed(client, 1.0)
        finally:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
    assert isinstance(outcome, APITimeoutError), repr(outcome)
    assert outcome.request_sent is False
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"
    assert server.attempts == 1  # the second call never reached the server


# -- (b) waiting for the pacer ----------------------------------------------------


async def test_waiting_for_the_pacer_is_bounded_by_the_deadline(new_client):
    """max_rate=1, eight calls with deadline=2: all end by ~2.2 s; the unsent say so."""
    async with HostileServer(ok) as server:
        client = new_client(server.base_url, max_rate=1)
        results = await asyncio.wait_for(
            asyncio.gather(*(timed(client, 2.0) for _ in range(8))), 2.0 + GRACE
        )
    sent = [outcome for outcome, _ in results if isinstance(outcome, Conversation)]
    unsent = [
        outcome for outcome, _ in results if not isinstance(outcome, Conversation)
    ]
    for outcome in unsent:
        assert isinstance(outcome, APITimeoutError), repr(outcome)
        assert outcome.request_sent is False
    assert 1 <= len(sent) <= 3  # at 1 per second, within 2 s
    assert len(sent) == server.attempts
    slowest = max(elapsed for _, elapsed in results)
    assert slowest <= bound(2.0), f"{slowest:.2f} s"


# -- (c) a Retry-After longer than the deadline -----------------------------------


def answer_with_retry_after(status: int, seconds: str) -> Any:
    async def step(request: Request, connection: Connection) -> None:
        await connection.respond(
            status,
            b'{"message": "come back later"}',
            [("Retry-After", seconds)],
        )

    return step


@pytest.mark.parametrize(
    ("status", "error"), [(503, InternalServerError), (429, RateLimitError)]
)
async def test_a_retry_after_past_the_deadline_is_not_slept(new_client, status, error):
    """Retry-After: 5 with deadline=1 (cap 100 s): the error at once, no 5 s sleep."""
    step = answer_with_retry_after(status, "5")
    async with HostileServer(step, ok) as server:
        client = new_client(server.base_url, max_retry_after=100.0)
        outcome, elapsed = await timed(client, 1.0)
    assert type(outcome) is error, repr(outcome)
    assert isinstance(outcome, APIStatusError)
    assert outcome.status_code == status
    assert outcome.attempts == server.attempts == 1
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"


# -- (d) a server that never answers ----------------------------------------------


@pytest.mark.parametrize("auto_generate", [False, True], ids=["name", "auto-generate"])
async def test_a_server_that_never_answers_is_cut_at_the_deadline(
    new_client, auto_generate
):
    """No answer at all, default per-attempt timeout (60 s): ends at ~1 s."""
    async with HostileServer(hang) as server:
        client = new_client(server.base_url)
        outcome, elapsed = await timed(client, 1.0, auto_generate=auto_generate)
    assert isinstance(outcome, APITimeoutError), repr(outcome)
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"
    assert server.attempts >= 1


async def test_a_deadline_set_through_with_options(new_client):
    """A with_options(deadline=1) view cuts a silent server at ~1 s too."""
    async with HostileServer(hang) as server:
        client = new_client(server.base_url)
        view = client.with_options(deadline=1.0)
        outcome, elapsed = await timed(view, None)
    assert isinstance(outcome, APITimeoutError), repr(outcome)
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"


# -- more waits: a trickled body, backoff, a TLS handshake that never ends --------


async def test_a_trickled_body_is_cut_at_the_deadline(new_client):
    """A body sent byte by byte (each read is quick) still ends at ~1 s."""
    async with HostileServer(trickle(0.1)) as server:
        client = new_client(server.base_url)
        outcome, elapsed = await timed(client, 1.0)
    assert isinstance(outcome, APITimeoutError), repr(outcome)
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"


async def test_backoff_waits_never_pass_the_deadline(new_client):
    """A refused port with 20 retries and real backoff ends by deadline=1."""
    client = new_client(refused_base_url(), max_retries=20)
    outcome, elapsed = await timed(client, 1.0)
    assert isinstance(outcome, APIConnectionError), repr(outcome)
    assert outcome.request_sent is False
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"


async def silent(connection: Connection) -> None:
    """Accept TCP, then say nothing (hold on for HANG_LIMIT at most)."""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        while await asyncio.wait_for(connection.reader.read(4096), 10.0):
            pass
    connection.close()


@given(remaining=st.floats(min_value=1e-6, max_value=1e6))
@example(remaining=1.0)
def test_connecting_is_cut_before_the_deadline_with_room_for_a_pause(remaining):
    """The connect timer ends first, even if the loop pauses 50 ms between the two."""
    timeout = _clip(aiohttp.ClientTimeout(total=None), remaining)
    assert timeout.total == remaining
    assert timeout.connect is not None
    assert remaining / 2 <= timeout.connect < remaining
    assert remaining - timeout.connect >= min(0.05, remaining / 2) * 0.999


async def test_a_tls_handshake_that_never_ends_is_cut_at_the_deadline(new_client):
    """https:// to a server that accepts TCP and never answers: ~1 s."""
    async with HostileServer(on_connect=silent) as server:
        client = new_client(server.base_url.replace("http://", "https://"))
        outcome, elapsed = await timed(client, 1.0)
    assert isinstance(outcome, APITimeoutError), repr(outcome)
    assert outcome.request_sent is False
    assert elapsed <= bound(1.0), f"{elapsed:.2f} s"
