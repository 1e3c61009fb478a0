"""Batches: rename_many, rename_stream, max_rate pacing, and plain gather."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from dify_async import (
    AsyncDifyClient,
    BadRequestError,
    Conversation,
    DifyError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RenameRequest,
)
from dify_async._pacing import Pacer
from dify_async.testing import FakeDifyServer, Fault

USER = "user-42"


def seed(server: FakeDifyServer, count: int, *, user: str = USER) -> list[str]:
    return [server.add_conversation(user=user, messages=["Hi"]) for _ in range(count)]


def requests_for(ids: list[str], *, user: str = USER) -> list[RenameRequest]:
    return [RenameRequest(cid, user, f"Ticket {n}") for n, cid in enumerate(ids)]


@pytest.fixture
def threaded() -> Iterator[FakeDifyServer]:
    """A fake server on its own thread, so the test's loop holds only our tasks."""
    with FakeDifyServer() as server:
        yield server


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def until(predicate: object, timeout: float = 10.0) -> None:
    """Poll *predicate* until it holds (a wait for a state, not a speed check)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


# -- rename_many ---------------------------------------------------------------


async def test_rename_many_returns_outcomes_in_input_order(fake, client):
    """Outcomes come back in input order even when later renames finish first."""
    ids = seed(fake, 60)
    for cid in ids[:10]:  # the first ones finish last
        fake.inject_fault(Fault.delay(0.2), conversation_id=cid)
    results = await client.rename_many(requests_for(ids), concurrency=20)
    assert [r.id for r in results] == ids
    assert [r.name for r in results] == [f"Ticket {n}" for n in range(60)]
    assert all(isinstance(r, Conversation) for r in results)


async def test_rename_many_isolates_failures(fake, client, no_retry_wait):
    """Each failure is returned in its own slot; every other request still runs."""
    ids = seed(fake, 40)
    silent = fake.add_conversation(user=USER)  # no messages: auto_generate fails
    fake.inject_fault(
        Fault.http(403, '{"code": "forbidden", "message": "no", "status": 403}'),
        conversation_id=ids[3],
    )
    fake.inject_fault(Fault.gateway(502), times=5, conversation_id=ids[7])
    requests = requests_for(ids)
    requests[5] = RenameRequest(ids[5], "someone-else", "Not mine")
    requests.append(RenameRequest(silent, USER, auto_generate=True))

    results = await client.rename_many(requests, concurrency=8)

    assert len(results) == 41
    assert isinstance(results[3], PermissionDeniedError)
    assert isinstance(results[5], NotFoundError)
    assert results[5].code == "not_found"
    assert isinstance(results[7], InternalServerError)
    assert results[7].status_code == 502
    assert results[7].attempts == 3
    assert isinstance(results[40], BadRequestError)
    failed = {3, 5, 7, 40}
    for index, result in enumerate(results[:40]):
        if index not in failed:
            assert isinstance(result, Conversation)
            assert fake.get_conversation(ids[index]).name == f"Ticket {index}"
    assert fake.renames_applied == 40 - 3
    assert fake.get_conversation(ids[5]).name == "New conversation"


async def test_rename_many_retries_transient_faults(fake, client, no_retry_wait):
    """Gateway errors, 429s and dropped connections are retried to success."""
    ids = seed(fake, 200)
    faults = [
        Fault.gateway(502),
        Fault.gateway(503),
        Fault.gateway(504, after_processing=True),
        Fault.rate_limit(retry_after="0"),
        Fault.disconnect(),
        Fault.disconnect(after_processing=True),
    ]
    for n, fault in enumerate(faults * 5):
        fake.inject_fault(fault, conversation_id=ids[n * 6])
    results = await client.rename_many(requests_for(ids), concurrency=16)
    assert all(isinstance(r, Conversation) for r in results)
    assert fake.requests_received == 200 + 30
    by_id = fake.requests_by_conversation
    assert all(
        by_id[cid] == (2 if n % 6 == 0 and n < 180 else 1) for n, cid in enumerate(ids)
    )
    assert [c.name for c in fake.conversations] == [f"Ticket {n}" for n in range(200)]


async def test_rename_many_concurrency_is_the_servers_max_in_flight():
    """The server never sees more requests at once than the concurrency asked for."""
    async with FakeDifyServer(latency=0.01) as fake:
        ids = seed(fake, 120)
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            results = await client.rename_many(requests_for(ids), concurrency=7)
    assert all(isinstance(r, Conversation) for r in results)
    assert fake.max_in_flight == 7


async def test_rename_many_reports_progress(fake, client):
    """The progress callback sees every rename end, failures included."""
    ids = seed(fake, 30)
    requests = requests_for(ids)
    requests[0] = RenameRequest(ids[0], "intruder", "x")
    seen: list[tuple[int, int]] = []
    results = await client.rename_many(
        requests,
        concurrency=4,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(n, 30) for n in range(1, 31)]
    assert isinstance(results[0], NotFoundError)


async def test_rename_many_progress_callback_error_cancels_the_batch(threaded):
    """An exception in the progress callback stops the batch and propagates."""
    ids = seed(threaded, 50)

    def explode(done: int, total: int) -> None:
        if done == 3:
            raise RuntimeError("progress display broke")

    async with AsyncDifyClient(threaded.api_key, base_url=threaded.base_url) as client:
        with pytest.raises(RuntimeError, match="display broke"):
            await client.rename_many(
                requests_for(ids), concurrency=4, on_progress=explode
            )
        assert not other_tasks()
    assert threaded.requests_received < 50


async def test_rename_many_of_nothing(fake, client):
    """An empty batch returns an empty list and sends nothing."""
    assert await client.rename_many([], concurrency=4) == []
    assert await client.rename_many(iter(()), concurrency=4) == []
    assert fake.requests_received == 0


async def test_rename_many_accepts_a_generator(fake, client):
    """Any finite iterable of requests works, not only lists."""
    ids = seed(fake, 5)
    results = await client.rename_many(
        (RenameRequest(cid, USER, "From a generator") for cid in ids), concurrency=2
    )
    assert [r.name for r in results] == ["From a generator"] * 5


async def test_rename_many_checks_every_item_before_sending(fake, client):
    """A stray item is refused, naming its index, before anything is sent."""
    ids = seed(fake, 3)
    batch: list[object] = [*requests_for(ids), {"conversation_id": ids[0]}]
    with pytest.raises(InvalidRequestError, match=r"requests\[3\] is a dict"):
        await client.rename_many(batch, concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="iterable"):
        await client.rename_many(42, concurrency=2)  # type: ignore[arg-type]
    assert fake.requests_received == 0


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "8", None])
async def test_rename_many_refuses_a_bad_concurrency(client, concurrency):
    """concurrency must be a positive int."""
    with pytest.raises(InvalidRequestError, match="concurrency"):
        await client.rename_many([], concurrency=concurrency)


async def test_cancelling_rename_many_leaves_nothing_behind(threaded):
    """Cancelling a batch cancels the calls in flight, frees their connections."""
    ids = seed(threaded, 40)
    threaded.latency = 30.0  # every request hangs until cancelled
    async with AsyncDifyClient(
        threaded.api_key, base_url=threaded.base_url, connection_limit=4
    ) as client:
        batch = asyncio.ensure_future(
            client.rename_many(requests_for(ids), concurrency=4)
        )
        await until(lambda: threaded.requests_received == 4)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        assert not other_tasks()

        # The pool holds 4 connections: had the cancelled calls kept theirs,
        # these renames would wait for a free connection forever.
        threaded.latency = 0.0
        rest = await asyncio.wait_for(
            client.rename_many(requests_for(ids[4:]), concurrency=4), timeout=20
        )
    assert all(isinstance(r, Conversation) for r in rest)
    assert threaded.requests_received == 40
    assert threaded.renames_applied == 36  # the cancelled four never finished


async def test_rename_many_under_a_timeout_cancels_cleanly(threaded):
    """A batch under asyncio.wait_for ends with TimeoutError and no stray task."""
    ids = seed(threaded, 10)
    threaded.latency = 30.0
    async with AsyncDifyClient(threaded.api_key, base_url=threaded.base_url) as client:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                client.rename_many(requests_for(ids), concurrency=3), timeout=0.3
            )
        assert not other_tasks()
        assert threaded.requests_received <= 3


async def test_closing_the_client_ends_a_batch_with_errors(threaded):
    """Closing the client mid-batch gives every request an outcome, not a hang."""
    ids = seed(threaded, 12)
    threaded.latency = 30.0
    client = AsyncDifyClient(threaded.api_key, base_url=threaded.base_url)
    async with client:
        batch = asyncio.ensure_future(
            client.rename_many(requests_for(ids), concurrency=3)
        )
        await until(lambda: threaded.requests_received == 3)
        await client.close()
        results = await asyncio.wait_for(batch, timeout=20)
    assert len(results) == 12
    assert all(isinstance(r, DifyError) for r in results)


async def test_closing_a_paced_client_ends_a_batch_with_errors(threaded):
    """Closing a client while calls wait for their max_rate slot ends them cleanly."""
    ids = seed(threaded, 20)
    client = AsyncDifyClient(threaded.api_key, base_url=threaded.base_url, max_rate=10)
    async with client:
        batch = asyncio.ensure_future(
            client.rename_many(requests_for(ids), concurrency=10)
        )
        await until(lambda: threaded.renames_applied >= 2)
        await client.close()
        results = await asyncio.wait_for(batch, timeout=20)
    assert len(results) == 20
    assert all(isinstance(r, (Conversation, DifyError)) for r in results)
    # A rename the server stored just as the client closed has no success.
    assert sum(isinstance(r, Conversation) for r in results) <= threaded.renames_applied
    assert threaded.renames_applied < 20


# -- rename_stream -------------------------------------------------------------


async def test_rename_stream_pairs_each_request_with_its_outcome(fake, client):
    """Every request comes back once, paired with its own outcome."""
    ids = seed(fake, 50)
    requests = requests_for(ids)
    requests[9] = RenameRequest(ids[9], "intruder", "x")
    seen = {}
    async with contextlib.aclosing(
        client.rename_stream(requests, concurrency=6)
    ) as out:
        async for request, outcome in out:
            assert request.conversation_id not in seen
            seen[request.conversation_id] = outcome
    assert set(seen) == set(ids)
    assert isinstance(seen[ids[9]], NotFoundError)
    for n, cid in enumerate(ids):
        if n != 9:
            assert seen[cid].name == f"Ticket {n}"


async def test_rename_stream_yields_in_completion_order(fake, client):
    """A slow rename does not hold back the ones that finished after it started."""
    ids = seed(fake, 6)
    fake.inject_fault(Fault.delay(0.3), conversation_id=ids[0])
    order = [
        request.conversation_id
        async for request, _ in client.rename_stream(requests_for(ids), concurrency=6)
    ]
    assert order[-1] == ids[0]
    assert sorted(order) == sorted(ids)


async def test_rename_stream_reads_an_async_iterable(fake, client):
    """An async generator works as input."""
    ids = seed(fake, 25)

    async def rows() -> AsyncIterator[RenameRequest]:
        for request in requests_for(ids):
            await asyncio.sleep(0)
            yield request

    names = {
        outcome.name async for _, outcome in client.rename_stream(rows(), concurrency=5)
    }
    assert names == {f"Ticket {n}" for n in range(25)}


async def test_rename_stream_memory_is_bounded_by_concurrency(threaded):
    """A huge input is read only as fast as renames finish and are consumed."""
    cid = threaded.add_conversation(user=USER)
    pulled = 0

    def huge() -> Iterator[RenameRequest]:
        nonlocal pulled
        for n in range(100_000):
            pulled += 1
            yield RenameRequest(cid, USER, f"Round {n}")

    concurrency = 4
    async with AsyncDifyClient(threaded.api_key, base_url=threaded.base_url) as client:
        stream = client.rename_stream(huge(), concurrency=concurrency)
        async with contextlib.aclosing(stream):
            consumed = 0
            async for _request, outcome in stream:
                assert isinstance(outcome, Conversation)
                consumed += 1
                if consumed % 10 == 0:
                    # A slow consumer: the workers must wait, not read ahead.
                    await asyncio.sleep(0.05)
                    assert pulled <= consumed + 3 * concurrency
                if consumed == 100:
                    break
        assert not other_tasks()
    assert pulled <= 100 + 3 * concurrency


async def test_closing_rename_stream_cancels_in_flight_calls(threaded):
    """Leaving an aclosing block early cancels the renames still in flight."""
    ids = seed(threaded, 20)
    for cid in ids[1:]:
        threaded.inject_fault(Fault.delay(30.0), conversation_id=cid)
    async with AsyncDifyClient(threaded.api_key, base_url=threaded.base_url) as client:
        stream = client.rename_stream(requests_for(ids), concurrency=5)
        async with contextlib.aclosing(stream):
            async for request, _ in stream:
                assert request.conversation_id == ids[0]
                # Its worker went on to a sixth: five renames hang in flight.
                await until(lambda: threaded.requests_received == 6)
                break
        assert not other_tasks()
    assert threaded.requests_received == 6
    assert threaded.renames_applied == 1


async def test_rename_stream_finishes_started_renames_when_the_input_fails(
    fake, client
):
    """If the input raises, started renames are yielded first, then it raises."""
    ids = seed(fake, 10)

    def rows() -> Iterator[RenameRequest]:
        yield from requests_for(ids[:4])
        raise OSError("disk went away")

    seen = []

    async def consume() -> None:
        async for request, outcome in client.rename_stream(rows(), concurrency=8):
            seen.append((request.conversation_id, outcome.name))

    with pytest.raises(OSError, match="disk went away"):
        await consume()
    assert sorted(seen) == sorted((cid, f"Ticket {n}") for n, cid in enumerate(ids[:4]))


async def test_rename_stream_survives_a_failing_async_input(fake, client):
    """An async input that raises ends the stream with its error, after the results."""
    ids = seed(fake, 3)

    async def rows() -> AsyncIterator[RenameRequest]:
        for request in requests_for(ids):
            yield request
        raise ValueError("bad cursor")

    seen = []

    async def consume() -> None:
        async for pair in client.rename_stream(rows(), concurrency=2):
            seen.append(pair)  # noqa: PERF401  (keep what came before the error)

    with pytest.raises(ValueError, match="bad cursor"):
        await consume()
    assert len(seen) == 3


async def test_rename_stream_pairs_a_stray_item_with_an_error(fake, client):
    """An item that is not a RenameRequest gets an InvalidRequestError outcome."""
    ids = seed(fake, 2)
    items: list[object] = [*requests_for(ids), "not a request"]
    outcomes = [o async for _, o in client.rename_stream(items, concurrency=2)]  # type: ignore[arg-type]
    assert sum(isinstance(o, InvalidRequestError) for o in outcomes) == 1
    assert sum(isinstance(o, Conversation) for o in outcomes) == 2


async def test_rename_stream_checks_its_arguments_at_once(client):
    """Bad arguments raise when rename_stream is called, not on first iteration."""
    with pytest.raises(InvalidRequestError, match="concurrency"):
        client.rename_stream([], concurrency=0)
    with pytest.raises(InvalidRequestError, match="iterable"):
        client.rename_stream(7, concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="iterable"):
        client.rename_stream("abc", concurrency=2)  # type: ignore[arg-type]


async def test_rename_stream_of_nothing(fake, client):
    """An empty input ends the stream at once."""
    assert [pair async for pair in client.rename_stream([], concurrency=3)] == []


# -- max_rate ------------------------------------------------------------------


def test_pacer_spaces_slots_evenly():
    """Callers that arrive together get slots exactly 1/rate apart."""
    pacer = Pacer(50.0)
    waits = [pacer.reserve(100.0, None) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.1])


def test_pacer_does_not_bank_idle_time():
    """After an idle spell the next caller goes at once, without a burst after it."""
    pacer = Pacer(20.0)
    assert pacer.reserve(10.0, None) == 0.0
    assert pacer.reserve(10.2, None) == 0.0
    assert pacer.reserve(10.2, None) == pytest.approx(0.05)


def test_pacer_reserves_nothing_past_the_callers_deadline():
    """A slot after the caller's latest time is refused and stays free."""
    pacer = Pacer(1.0)
    assert pacer.reserve(0.0, None) == 0.0
    assert pacer.reserve(0.0, 0.5) is None  # the next slot is at 1.0
    assert pacer.reserve(0.0, 2.0) == 1.0  # still free for the next caller


async def test_max_rate_is_shared_by_every_call_of_a_client(fake):
    """Concurrent calls of one client together stay under max_rate."""
    ids = seed(fake, 11)
    async with AsyncDifyClient(
        fake.api_key, base_url=fake.base_url, max_rate=50
    ) as client:
        started = time.monotonic()
        await asyncio.gather(
            *(client.rename_conversation(cid, user=USER, name="Paced") for cid in ids)
        )
        elapsed = time.monotonic() - started
    # 11 requests 20 ms apart cannot take less than 10 gaps.
    assert elapsed >= 10 / 50 - 0.01
    assert fake.renames_applied == 11


async def test_max_rate_paces_batches_and_their_retries(fake, no_retry_wait):
    """Retries count against max_rate like first attempts."""
    ids = seed(fake, 5)
    fake.inject_fault(Fault.gateway(503), times=5)
    async with AsyncDifyClient(
        fake.api_key, base_url=fake.base_url, max_rate=40
    ) as client:
        started = time.monotonic()
        results = await client.rename_many(requests_for(ids), concurrency=5)
        elapsed = time.monotonic() - started
    assert all(isinstance(r, Conversation) for r in results)
    assert fake.requests_received == 10
    assert elapsed >= 9 / 40 - 0.01


@pytest.mark.parametrize("rate", [0, -5, "10", True])
def test_max_rate_must_be_positive(rate):
    """A max_rate that is not a positive number is refused at construction."""
    with pytest.raises(InvalidRequestError, match="max_rate"):
        AsyncDifyClient("app-key", max_rate=rate)


# -- plain gather ----------------------------------------------------------------


async def test_gather_over_thousands_of_calls(threaded):
    """asyncio.gather over 1,500 calls works; connection_limit bounds the sockets."""
    threaded.latency = 0.002
    ids = seed(threaded, 1500)
    async with AsyncDifyClient(
        threaded.api_key, base_url=threaded.base_url, connection_limit=10
    ) as client:
        results = await asyncio.gather(
            *(
                client.rename_conversation(cid, user=USER, name=f"Gathered {n}")
                for n, cid in enumerate(ids)
            )
        )
    assert [r.name for r in results] == [f"Gathered {n}" for n in range(1500)]
    assert threaded.max_in_flight <= 10
    assert threaded.requests_received == 1500


async def test_gather_through_a_borrowed_session_uses_its_pool(threaded):
    """With session=, the session's own connector sets the limit."""
    threaded.latency = 0.005
    ids = seed(threaded, 200)
    connector = aiohttp.TCPConnector(limit=3)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        AsyncDifyClient(
            threaded.api_key, base_url=threaded.base_url, session=session
        ) as client,
    ):
        await asyncio.gather(
            *(
                client.rename_conversation(cid, user=USER, name="Borrowed")
                for cid in ids
            )
        )
    assert threaded.max_in_flight <= 3
    assert threaded.renames_applied == 200
