"""Machine instructions per rename, counted by valgrind: a figure noise hardly moves.

Throughput and CPU time on a shared machine swing by several percent from one
run to the next (``docs/benchmarks.md`` says why). The number of instructions a
rename executes moves by about 0.2%, so it is the figure to compare two
versions of the code by, one change at a time, and to check that a change
meant to be faster is.

Each runner of ``runner.py`` runs twice under callgrind, with a small and a
large batch, against the benchmark server (which runs natively); the
difference in instructions, over the difference in renames, is the cost of
one rename, without start-up, imports and warm-up.

Run as ``python benchmarks/instructions.py [runner ...]`` (by default
``aiohttp-gather gather``); it needs ``valgrind`` on the ``PATH``, and takes
about a minute per runner. The first runner named is the baseline of the
ratio column.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from runner import RUNNERS
from server import ServerProcess

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 1_000, 3_000
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(runner: str, base_url: str, renames: int, concurrency: int) -> int:
    """Instructions executed by one run of *runner* for *renames* renames."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(HERE / "runner.py"),
        runner,
        "--url",
        base_url,
        "--requests",
        str(renames),
        "--concurrency",
        str(concurrency),
        "--warmup",
        "200",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise SystemExit(f"{runner}: the run under callgrind failed:\n{tail}")
    return int(found[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runners", nargs="*", default=["aiohttp-gather", "gather"], choices=RUNNERS
    )
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed; nothing measured", file=sys.stderr)
        return 2
    heading = f"runner (concurrency {args.concurrency})"
    print(f"| {heading} | instructions per rename | ratio |")
    print("|---|--:|--:|")
    baseline = None
    with ServerProcess() as server:
        for runner in args.runners:
            small, large = (
                instructions(runner, server.base_url, n, args.concurrency)
                for n in (SMALL, LARGE)
            )
            per_rename = (large - small) / (LARGE - SMALL)
            baseline = baseline or per_rename
            print(f"| {runner} | {per_rename:,.0f} | {per_rename / baseline:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
