"""Thousands of calls through faults leave no connection, task or warning behind."""

from __future__ import annotations

import asyncio
import gc
import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from faulty_servers import (
    KEY,
    Connection,
    FaultyServer,
    Request,
    Step,
    conversation_json,
    gateway_page,
    hang,
    ok,
    rate_limited,
    reply,
    reset,
)

from dify_async import (
    APIConnectionError,
    AsyncDifyClient,
    Conversation,
    DifyError,
    InternalServerError,
    RenameRequest,
)
from dify_async.testing import FakeDifyServer, Fault

FD_DIR = Path("/proc/self/fd")
HAVE_FDS = FD_DIR.is_dir()
CONNECTION_LIMIT = 8


def open_fds() -> int:
    return sum(1 for _ in FD_DIR.iterdir())


async def fds_after_closing(baseline: int) -> int:
    """Open descriptors once closing transports had a moment to finish (1 s)."""
    for _ in range(100):
        if open_fds() <= baseline:
            break
        await asyncio.sleep(0.01)  # a transport closes its socket a tick later
    return open_fds()


@pytest.fixture
def resource_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised during the test, collected after a full GC."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
        gc.collect()


class FdSampler:
    """Samples this process's open file descriptors while calls run."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(open_fds())
            await asyncio.sleep(0.005)

    def __enter__(self):
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


def rotate(*steps: Step) -> Step:
    """A step that runs each of *steps* in turn, forever."""
    turns = itertools.cycle(steps)

    async def step(request: Request, connection: Connection) -> None:
        await next(turns)(request, connection)

    return step


async def cut_mid_body(request: Request, connection: Connection) -> None:
    body = conversation_json(request)
    await connection.head(
        200, [("Content-Type", "application/json")], content_length=len(body)
    )
    await connection.send(body[:10])
    connection.reset()


async def truncated(request: Request, connection: Connection) -> None:
    await connection.respond(200, conversation_json(request)[:-5])


async def fin_after_answer(request: Request, connection: Connection) -> None:
    await ok(request, connection)
    connection.close()


@pytest.mark.skipif(not HAVE_FDS, reason="needs /proc/self/fd")
async def test_thousands_of_faulty_calls_leave_nothing_open(
    no_retry_wait, resource_warnings
):
    """3000 calls through resets, cut bodies, 5xx, 429 and timeouts leak nothing."""
    count = 3000
    mix = rotate(
        ok,
        reset,
        gateway_page(502),
        cut_mid_body,
        ok,
        truncated,
        rate_limited(("Retry-After", "0")),
        fin_after_answer,
        reply(404, '{"code": "not_found", "message": "", "status": 404}'),
        *[ok] * 20,
        hang,
    )
    async with FaultyServer(mix) as server:
        baseline = open_fds()
        client = AsyncDifyClient(
            KEY,
            base_url=server.base_url,
            connection_limit=CONNECTION_LIMIT,
            max_retries=1,
            timeout=0.2,
        )
        requests = [
            RenameRequest(f"45701982-8118-4bc5-8e9b-{n:012d}", "u", f"Ticket {n}")
            for n in range(count)
        ]
        with FdSampler() as sampler:
            async with client:
                outcomes = await client.rename_many(requests, concurrency=64)
        await server.wait_until_idle()
        leftover = await fds_after_closing(baseline)

    assert len(outcomes) == count
    assert all(isinstance(o, Conversation | DifyError) for o in outcomes)
    successes = sum(isinstance(o, Conversation) for o in outcomes)
    assert count * 0.3 < successes < count
    # Resets, cut bodies and timeouts forced hundreds of new connections.
    assert server.connections_opened > 100
    # Never far above the limit (the server sees some closes late; without the
    # limit there would be 64), and every connection closed in the end.
    assert server.max_open_connections <= 2 * CONNECTION_LIMIT
    assert max(sampler.samples) <= baseline + 4 * CONNECTION_LIMIT + 8
    assert leftover <= baseline
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    gc.collect()
    assert [str(w.message) for w in resource_warnings] == []


async def test_thousands_against_the_fake_server_bill_each_llm_call_once(
    fake: FakeDifyServer, no_retry_wait, resource_warnings
):
    """Gateway faults around real renames: names land, no LLM call is paid twice."""
    explicit = [fake.add_conversation(user="u") for _ in range(600)]
    generated = [fake.add_conversation(user="u", messages=["Hi"]) for _ in range(600)]
    faults = [
        Fault.gateway(502),
        Fault.gateway(503),
        Fault.disconnect(),
        Fault.rate_limit(retry_after="0"),
        Fault.gateway(502, after_processing=True),
        Fault.disconnect(after_processing=True),
    ]
    for n, cid in enumerate(explicit + generated):
        fake.inject_fault(faults[n % len(faults)], conversation_id=cid)
    requests = [RenameRequest(cid, "u", f"Name {n}") for n, cid in enumerate(explicit)]
    requests += [RenameRequest(cid, "u", auto_generate=True) for cid in generated]

    baseline = open_fds() if HAVE_FDS else 0
    async with AsyncDifyClient(
        fake.api_key, base_url=fake.base_url, connection_limit=CONNECTION_LIMIT
    ) as client:
        outcomes = await client.rename_many(requests, concurrency=50)

    named, auto = outcomes[:600], outcomes[600:]
    assert all(isinstance(o, Conversation) for o in named)
    assert [fake.get_conversation(cid).name for cid in explicit] == [
        f"Name {n}" for n in range(600)
    ]
    # Faults the server could not have started are retried; the others raise.
    kinds = [n % len(faults) for n in range(600, 1200)]
    for kind, outcome in zip(kinds, auto, strict=True):
        if kind in (1, 3):  # 503, 429: retried, then generated
            assert isinstance(outcome, Conversation)
        elif kind in (0, 4):  # 502 before or after processing: raised
            assert isinstance(outcome, InternalServerError)
            assert outcome.attempts == 1
        else:  # dropped connection: raised, never resent
            assert isinstance(outcome, APIConnectionError)
            assert outcome.attempts == 1
    # Only requests that reached the application paid for a title, once each.
    reached = sum(kind in (1, 3, 4, 5) for kind in kinds)
    assert fake.llm_calls == reached
    retried = sum(kind in (1, 3) for kind in kinds)
    assert fake.requests_received == 2 * len(explicit) + len(generated) + retried
    if HAVE_FDS:
        assert await fds_after_closing(baseline) <= baseline
    gc.collect()
    assert [str(w.message) for w in resource_warnings] == []


async def test_cancelled_calls_leave_nothing_open(resource_warnings):
    """Hundreds of cancelled calls release every connection they held."""
    async with (
        FaultyServer(hang) as server,
        AsyncDifyClient(KEY, base_url=server.base_url, connection_limit=0) as client,
    ):
        tasks = [
            asyncio.create_task(
                client.rename_conversation(
                    f"45701982-8118-4bc5-8e9b-{n:012d}", user="u", name="x"
                )
            )
            for n in range(300)
        ]
        await server.wait_for_requests(300)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_until_idle()
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert server.closed_by_peer == 300
    gc.collect()
    assert [str(w.message) for w in resource_warnings] == []
