"""A client belongs to one event loop; using it from another is a clear error.

The mistakes this catches: calling ``asyncio.run`` once per request with a
client kept in a global, or sharing one client between threads that each run
their own loop. Both must raise :class:`EventLoopError` (a :class:`DifyError`
and a :class:`RuntimeError`) at once, never hang or raise aiohttp's
"attached to a different loop". Each cross-loop call is bounded by
``asyncio.wait_for`` and each thread by a join timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from faulty_servers import CID
from hostile_servers import ServerThread, ok_then_close

from dify_async import (
    AsyncDifyClient,
    Conversation,
    DifyError,
    EventLoopError,
)
from dify_async.testing import FakeDifyServer

KEY = "app-event-loops-key"
USER = "user-42"
CALL_LIMIT = 5.0
"""The most a cross-loop call may take before the test calls it hung."""
PROMPTLY = 1.0
"""An EventLoopError must come this fast: it needs no network at all."""


def rename(
    client: AsyncDifyClient, name: str = "Trip plans"
) -> Awaitable[Conversation]:
    return client.rename_conversation(CID, user=USER, name=name)


async def outcome_of(call: Callable[[], Awaitable[object]]) -> tuple[object, float]:
    """Await ``call()`` (5 s at most); return its result or error, and the time."""
    started = time.monotonic()
    try:
        result: object = await asyncio.wait_for(call(), CALL_LIMIT)
    except Exception as error:  # the outcome under test, whatever it is
        result = error
    return result, time.monotonic() - started


def in_thread(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``asyncio.run(work())`` in another thread; return what it returned."""
    results: list[Any] = []

    def main() -> None:
        try:
            results.append(asyncio.run(work()))
        except BaseException as error:  # handed back to the test
            results.append(error)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(CALL_LIMIT * 2)
    assert not thread.is_alive(), "the other thread's loop hung"
    [result] = results
    return result


async def in_thread_async(work: Callable[[], Awaitable[Any]]) -> Any:
    """:func:`in_thread`, without blocking the running loop meanwhile."""
    return await asyncio.to_thread(in_thread, work)


def assert_event_loop_error(outcome: object, elapsed: float) -> None:
    assert isinstance(outcome, EventLoopError), repr(outcome)
    assert isinstance(outcome, DifyError)
    assert isinstance(outcome, RuntimeError)
    assert "loop" in str(outcome).lower()
    assert elapsed < PROMPTLY, f"{elapsed:.2f} s"


# -- one client, two asyncio.run --------------------------------------------------


def test_a_client_from_a_finished_asyncio_run_raises_in_the_next():
    """Made and used in one asyncio.run, used in a second: EventLoopError.

    The server closes each connection (``Connection: close``), so nothing of
    the first loop stays pooled and the client can be closed from the second.
    """
    with ServerThread(ok_then_close) as server:

        async def first() -> AsyncDifyClient:
            client = AsyncDifyClient(KEY, base_url=server.base_url)
            await rename(client, "first")
            return client

        client = asyncio.run(first())

        async def second() -> tuple[object, float]:
            try:
                return await outcome_of(lambda: rename(client, "second"))
            finally:
                await client.close()

        outcome, elapsed = asyncio.run(second())
    assert_event_loop_error(outcome, elapsed)
    assert server.attempts == 1  # the second call never went out


def test_a_client_of_a_live_loop_raises_in_asyncio_run():
    """A client whose loop still runs elsewhere raises in asyncio.run too.

    The first loop is kept (not closed) so that its pooled keep-alive
    connection can be closed there afterwards.
    """
    with FakeDifyServer() as fake:
        cid = fake.add_conversation(user=USER)
        first_loop = asyncio.new_event_loop()
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url)
        try:
            first_loop.run_until_complete(
                client.rename_conversation(cid, user=USER, name="first")
            )
            outcome, elapsed = asyncio.run(
                outcome_of(
                    lambda: client.rename_conversation(cid, user=USER, name="second")
                )
            )
        finally:
            first_loop.run_until_complete(client.close())
            first_loop.close()
        stored = fake.get_conversation(cid)
    assert_event_loop_error(outcome, elapsed)
    assert stored.name == "first"
    assert fake.requests_received == 1


def test_a_client_made_outside_any_loop_works_in_one():
    """No false alarm: a client built in sync code belongs to its first loop."""
    with ServerThread(ok_then_close) as server:
        client = AsyncDifyClient(KEY, base_url=server.base_url)

        async def use() -> list[Conversation]:
            try:
                return [await rename(client, "one"), await rename(client, "two")]
            finally:
                await client.close()

        conversations = asyncio.run(use())
    assert [c.name for c in conversations] == ["one", "two"]


# -- another thread's loop --------------------------------------------------------


async def test_a_client_used_from_another_threads_loop_raises(fake):
    """A client of this loop, called from a thread's asyncio.run: EventLoopError."""
    cid = fake.add_conversation(user=USER)
    async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
        await client.rename_conversation(cid, user=USER, name="here")
        outcome, elapsed = await in_thread_async(
            lambda: outcome_of(
                lambda: client.rename_conversation(cid, user=USER, name="there")
            )
        )
        # The client still works in its own loop afterwards.
        again = await client.rename_conversation(cid, user=USER, name="here again")
    assert_event_loop_error(outcome, elapsed)
    assert again.name == "here again"
    assert fake.requests_received == 2


async def test_a_client_first_used_in_a_thread_belongs_to_that_thread():
    """Its first use binds it: a thread uses it, then this loop gets the error."""
    with ServerThread(ok_then_close) as server:
        client = AsyncDifyClient(KEY, base_url=server.base_url)

        async def use_there() -> object:
            try:
                return await rename(client, "there")
            except Exception as error:  # the outcome under test
                return error

        try:
            there = await in_thread_async(use_there)
            outcome, elapsed = await outcome_of(lambda: rename(client, "here"))
        finally:
            await client.close()  # nothing is pooled: the server closed it
    assert isinstance(there, Conversation), repr(there)
    assert_event_loop_error(outcome, elapsed)
    assert server.attempts == 1


# -- borrowed sessions ------------------------------------------------------------


async def test_a_borrowed_session_of_this_loop_used_from_a_thread_raises(fake):
    """A client on a session of this loop, called from a thread: EventLoopError."""
    cid = fake.add_conversation(user=USER)
    async with aiohttp.ClientSession() as session:
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url, session=session)
        outcome, elapsed = await in_thread_async(
            lambda: outcome_of(
                lambda: client.rename_conversation(cid, user=USER, name="there")
            )
        )
        await client.close()
        assert not session.closed
    assert_event_loop_error(outcome, elapsed)
    assert fake.requests_received == 0


async def test_a_client_made_in_a_thread_on_a_session_of_this_loop_raises(fake):
    """A thread builds a client on this loop's session and calls it: EventLoopError."""
    cid = fake.add_conversation(user=USER)
    async with aiohttp.ClientSession() as session:

        async def there() -> tuple[object, float]:
            started = time.monotonic()
            try:
                client = AsyncDifyClient(
                    fake.api_key, base_url=fake.base_url, session=session
                )
            except EventLoopError as error:  # refusing it at construction is fine
                return error, time.monotonic() - started
            try:
                return await outcome_of(
                    lambda: client.rename_conversation(cid, user=USER, name="x")
                )
            finally:
                await client.close()

        outcome, elapsed = await in_thread_async(there)
        assert not session.closed
    assert_event_loop_error(outcome, elapsed)
    assert fake.requests_received == 0


async def test_one_client_per_thread_works():
    """No false alarm: each thread with a client of its own loop renames fine."""
    with ServerThread(ok_then_close) as server:

        async def work() -> str:
            async with AsyncDifyClient(KEY, base_url=server.base_url) as client:
                return (await rename(client, "mine")).name

        names = await asyncio.gather(*(in_thread_async(work) for _ in range(2)))
    assert names == ["mine", "mine"]
