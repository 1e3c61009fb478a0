"""Profile one runner's hot path with pyinstrument.

Starts the benchmark server in its own process, runs a batch of renames in
this process under pyinstrument's sampling profiler, and prints where the CPU
time went per request: by package (dify_async, aiohttp, asyncio, ...) and by
function (self time), waiting in the selector left out.

    python benchmarks/profile.py stream --requests 20000
    python benchmarks/profile.py aiohttp --requests 20000 --html /tmp/raw.html

Compare the raw ``aiohttp`` runner with one of ours to see what our client
adds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runner import RUNNERS, Batch, run
from server import ServerProcess

IDLE = {"select", "poll", "epoll", "_run_once"}  # waiting, not working


def _package(path: str) -> str:
    parts = Path(path).parts
    for marker in ("site-packages", "dify_async", "benchmarks"):
        if marker in parts:
            index = parts.index(marker)
            if marker == "site-packages":
                return parts[index + 1].split(".")[0] if index + 1 < len(parts) else "?"
            return marker
    if "asyncio" in parts:
        return "asyncio"
    return Path(path).stem if path else "?"


def profile(args: argparse.Namespace) -> tuple[Any, float]:
    """Run the batch under pyinstrument; return its session and CPU seconds."""
    from pyinstrument import Profiler  # noqa: PLC0415

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    profiler = Profiler(interval=args.interval, async_mode="disabled")
    spent: list[float] = []

    async def measure(batch: Batch) -> None:
        await batch(max(500, args.concurrency))
        profiler.start()
        started = time.process_time()
        await batch(args.requests)
        spent.append(time.process_time() - started)
        profiler.stop()

    with ServerProcess(cpu=cores[0] if len(cores) > 1 else None) as server:
        if len(cores) > 1:
            os.sched_setaffinity(0, {cores[1]})
        asyncio.run(run(args.runner, server.base_url, args.concurrency, measure))
    if args.html:
        Path(args.html).write_text(profiler.output_html())
    return profiler.last_session, spent[0]


def self_times(session: Any) -> tuple[Counter[str], Counter[str]]:
    """Self time by function and by package, waiting in the selector left out."""
    by_function: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    stack = [session.root_frame()]
    while stack:
        frame = stack.pop()
        if frame is None:
            continue
        stack.extend(frame.children)
        if frame.is_synthetic or frame.function in IDLE:
            continue  # a "[self]" leaf repeats its parent's self time
        if frame.total_self_time <= 0:
            continue
        key = f"{frame.function}  ({frame.code_position_short()})"
        by_function[key] += frame.total_self_time
        by_package[_package(frame.file_path or "")] += frame.total_self_time
    return by_function, by_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runner", choices=RUNNERS)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.0002)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    args = parser.parse_args()
    session, cpu = profile(args)
    by_function, by_package = self_times(session)
    per_request = 1e6 / args.requests
    total = sum(by_package.values())
    print(
        f"{args.runner}, concurrency {args.concurrency}: "
        f"{cpu * per_request:.1f} us CPU per request under the profiler "
        f"({total * per_request:.1f} us sampled outside the selector)"
    )
    print("\nself time by package (us per request):")
    for name, seconds in by_package.most_common():
        print(f"  {seconds * per_request:7.1f}  {name}")
    print(f"\nself time by function, top {args.top} (us per request):")
    for name, seconds in by_function.most_common(args.top):
        print(f"  {seconds * per_request:7.1f}  {name}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
