"""One benchmark run in its own process: N renames by one runner.

Runners:

``aiohttp``
    The baseline: raw aiohttp as a competent user writes it. One
    ``ClientSession``, a pre-built headers dict, ``json.dumps`` of the body,
    ``json.loads`` of the answer (and a check of the status), *concurrency*
    workers pulling from one iterator; each answer is dropped once decoded.
    The floor: no form of ours is asked to match it, since each does more
    with the answers, as the raw variants below do.
``aiohttp-stream``
    The same pool, handing each answer to the caller's ``async for`` through
    a queue of *concurrency* places, as ``rename_stream`` does: what
    ``rename_stream`` is measured against, memory included.
``aiohttp-list``
    The same pool, keeping every answer in a list in input order, as
    ``rename_many`` does: what ``rename_many`` is measured against.
``aiohttp-gather``
    The same calls, driven as ``gather`` below drives ours: one task per
    rename under ``asyncio.gather``, an ``asyncio.Semaphore`` bounding them.
``gather``
    ``AsyncDifyClient.rename_conversation`` under ``asyncio.gather``, with an
    ``asyncio.Semaphore`` bounding the calls in flight.
``many``
    ``AsyncDifyClient.rename_many``.
``stream``
    ``AsyncDifyClient.rename_stream`` over a lazy generator of requests.

Every runner does the same work per rename: build the body for one of 1,024
conversation ids and names, send it, read the answer, decode it. Both clients
use a connector limit of 100 connections.

The process prints one JSON line: requests per second, CPU seconds of this
process spent in the timed part, how many passes the garbage collector made
meanwhile and how long they took, peak RSS (KiB), and the CPU seconds the
server spent meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

Batch = Callable[[int], Awaitable[None]]
Measure = Callable[[Batch], Awaitable[None]]

RUNNERS = (
    "aiohttp",
    "aiohttp-gather",
    "aiohttp-list",
    "aiohttp-stream",
    "gather",
    "many",
    "stream",
)
_END = object()
USER = "user-42"
API_KEY = "app-benchmark0000000000000000"
CONNECTION_LIMIT = 100
POOL = 1024
IDS = [str(uuid.UUID(int=(n + 1) * 0x9E3779B97F4A7C15)) for n in range(POOL)]
NAMES = [f"Ticket {n}" for n in range(POOL)]


def server_cpu(host: str, port: int) -> float:
    """The server's own CPU seconds so far (``GET /__stats``)."""
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET /__stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        data = b""
        while b"}" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return float(json.loads(data.split(b"\r\n\r\n", 1)[1])["cpu"])


# -- drivers: the same for raw aiohttp and for ours ---------------------------

Rename = Callable[[int], Awaitable[object]]


async def drive_pool(rename: Rename, n: int, concurrency: int, *, keep: bool) -> None:
    """*concurrency* workers pull indices from one iterator."""
    indices = iter(range(n))
    results: list[object] = [None] * n if keep else []

    async def worker() -> None:
        for index in indices:
            result = await rename(index)
            if keep:
                results[index] = result

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drive_gather(rename: Rename, n: int, concurrency: int) -> None:
    """One task per rename under gather, a semaphore bounding them."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> object:
        async with semaphore:
            return await rename(index)

    await asyncio.gather(*(one(index) for index in range(n)))


async def stream_results(
    rename: Rename, n: int, concurrency: int
) -> AsyncIterator[object]:
    """Bounded streaming: a pool puts answers in a queue the caller drains."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=concurrency)
    indices = iter(range(n))

    async def worker() -> None:
        for index in indices:
            await queue.put(await rename(index))

    async def produce() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await queue.put(_END)

    producer = asyncio.ensure_future(produce())
    while (item := await queue.get()) is not _END:
        yield item
    await producer


# -- raw aiohttp ----------------------------------------------------------------


async def run_aiohttp(
    kind: str, base_url: str, concurrency: int, measure: Measure
) -> None:
    import aiohttp  # noqa: PLC0415

    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    dumps, loads = json.dumps, json.loads
    connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def rename(index: int) -> object:
            slot = index % POOL
            body = {"name": NAMES[slot], "auto_generate": False, "user": USER}
            async with session.post(
                f"{base_url}/conversations/{IDS[slot]}/name",
                data=dumps(body).encode(),
                headers=headers,
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            return loads(raw)

        async def stream(n: int) -> None:
            async for _result in stream_results(rename, n, concurrency):
                pass

        batches: dict[str, Batch] = {
            "aiohttp": lambda n: drive_pool(rename, n, concurrency, keep=False),
            "aiohttp-list": lambda n: drive_pool(rename, n, concurrency, keep=True),
            "aiohttp-gather": lambda n: drive_gather(rename, n, concurrency),
            "aiohttp-stream": stream,
        }
        await measure(batches[kind])


# -- dify_async ---------------------------------------------------------------


async def run_client(
    kind: str, base_url: str, concurrency: int, measure: Measure
) -> None:
    from dify_async import AsyncDifyClient, RenameRequest  # noqa: PLC0415

    async with AsyncDifyClient(
        API_KEY, base_url=base_url, connection_limit=CONNECTION_LIMIT
    ) as client:

        def rename(index: int) -> Awaitable[object]:
            # The call itself, as a user's code awaits it: no wrapper coroutine.
            slot = index % POOL
            return client.rename_conversation(IDS[slot], name=NAMES[slot], user=USER)

        def gather(n: int) -> Awaitable[None]:
            return drive_gather(rename, n, concurrency)

        def requests(n: int) -> Iterator[RenameRequest]:
            for index in range(n):
                slot = index % POOL
                yield RenameRequest(IDS[slot], USER, NAMES[slot])

        async def many(n: int) -> None:
            results = await client.rename_many(requests(n), concurrency=concurrency)
            assert not any(isinstance(r, Exception) for r in results[:1])

        async def stream(n: int) -> None:
            async for _request, outcome in client.rename_stream(
                requests(n), concurrency=concurrency
            ):
                if isinstance(outcome, Exception):
                    raise outcome

        batch = {"gather": gather, "many": many, "stream": stream}[kind]
        await measure(batch)


async def run(kind: str, base_url: str, concurrency: int, measure: Measure) -> None:
    """Set up *kind*'s client, and hand its batch function to *measure*."""
    if kind.startswith("aiohttp"):
        await run_aiohttp(kind, base_url, concurrency, measure)
    else:
        await run_client(kind, base_url, concurrency, measure)


# -- measuring ----------------------------------------------------------------


class GCClock:
    """The garbage collector's passes and their time, while in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.passes = 0
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.passes += 1
            self.seconds += time.perf_counter() - self._started


def timed(args: argparse.Namespace) -> Measure:
    """Warm up, then time one batch of ``args.requests`` renames."""

    async def measure(batch: Batch) -> None:
        await batch(max(args.warmup, args.concurrency))
        host, port = args.server
        before_server = server_cpu(host, port)
        clock = GCClock()
        gc.callbacks.append(clock)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await batch(args.requests)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        gc.callbacks.remove(clock)
        server = server_cpu(host, port) - before_server
        result = {
            "runner": args.runner,
            "concurrency": args.concurrency,
            "requests": args.requests,
            "wall": wall,
            "rps": args.requests / wall,
            "cpu_us": cpu / args.requests * 1e6,
            "gc_passes": clock.passes,
            "gc_us": clock.seconds / args.requests * 1e6,
            "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "server_cpu": server,
            "server_busy": server / wall,
        }
        print(json.dumps(result), flush=True)

    return measure


def server_address(base_url: str) -> tuple[str, int]:
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runner", choices=RUNNERS)
    parser.add_argument("--url", required=True, help="base URL, /v1 included")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    args.server = server_address(args.url)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(run(args.runner, args.url, args.concurrency, timed(args)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
