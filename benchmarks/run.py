"""Benchmark dify_async against raw aiohttp, and check the performance targets.

    python benchmarks/run.py            # the full run (about 4 minutes)
    python benchmarks/run.py --quick    # a smoke run (under a minute)

The benchmark server (``server.py``) runs in its own process, pinned to one
core; every runner (``runner.py``) runs in a fresh process pinned to another.

Each form of ours is compared with raw aiohttp driven the same way (see
``runner.py``): ``rename_conversation`` under ``gather`` with raw calls under
``gather``, ``rename_many`` with a raw pool that keeps every answer in a list,
``rename_stream`` with a raw pool that hands answers to the caller through a
queue. Plain raw aiohttp in a worker pool that drops the answers is measured
too, as the floor.

Rounds are interleaved: in every round, each of our runners runs right next
to its raw counterpart (before it in one round, after it in the next), in a
rotating order. Each figure is the median over the rounds, and each ratio is
the median of the ratios between the two runs of a pair, so that the drift of
a noisy machine cancels out. Each run also times the garbage collector's
passes, which swing from one process to the next; next to each ratio's
median, the targets give its lowest and highest pair.

A memory run follows: 100,000 renames through ``rename_stream`` against raw
aiohttp streaming the same way, and against ``rename_stream`` with 10,000.

The full run prints a table, writes ``benchmarks/results/latest.json``, draws
``docs/_static/benchmarks.png`` and rewrites the results block of
``docs/benchmarks.md``. It exits with status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from server import ServerProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNNER = HERE / "runner.py"
RESULTS = HERE / "results"
CHART = ROOT / "docs" / "_static" / "benchmarks.png"
DOCS = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(% bench-results:start\n).*?(% bench-results:end)", re.DOTALL)

FLOOR = "aiohttp"
OURS = ("gather", "many", "stream")
BASELINES = {
    "gather": "aiohttp-gather",
    "many": "aiohttp-list",
    "stream": "aiohttp-stream",
}
RUNNERS = (FLOOR, *(name for ours in OURS for name in (BASELINES[ours], ours)))
LABELS = {
    "aiohttp": "raw aiohttp, worker pool (the floor)",
    "aiohttp-gather": "raw aiohttp, gather + semaphore",
    "gather": "rename_conversation, gather + semaphore",
    "aiohttp-list": "raw aiohttp, pool into a list",
    "many": "rename_many",
    "aiohttp-stream": "raw aiohttp, pool into a queue",
    "stream": "rename_stream",
}
COLORS = {
    "aiohttp": "#bdbdbd",
    "aiohttp-gather": "#9ecae1",
    "gather": "#2171b5",
    "aiohttp-list": "#a1d99b",
    "many": "#238b45",
    "aiohttp-stream": "#fdae6b",
    "stream": "#d94801",
}
RATIOS = (("rps", "rps_ratio"), ("cpu_us", "cpu_ratio"), ("rss_kib", "rss_ratio"))

# Targets, ours over its raw counterpart.
MIN_THROUGHPUT = 0.90
MIN_GATHER_THROUGHPUT = 0.93  # rename_conversation under gather, concurrency 64
MAX_CPU = 1.10
MAX_STREAM_RSS = 1.30
MAX_RSS_GROWTH = 1.10


class Plan:
    """How much work a run does."""

    def __init__(self, *, quick: bool, rounds: int | None) -> None:
        self.quick = quick
        self.rounds = rounds or (2 if quick else 7)
        # (concurrency, requests per timed batch, warm-up requests)
        self.loads = (
            [(64, 2_000, 500), (1, 600, 100)]
            if quick
            else [(64, 6_000, 1_000), (1, 2_000, 200)]
        )
        self.memory_large = 20_000 if quick else 100_000
        self.memory_small = 2_000 if quick else 10_000
        self.memory_repeats = 1 if quick else 2


class Bench:
    """Runs runners against one server, each in a fresh pinned process."""

    def __init__(self, plan: Plan, server: ServerProcess, cpu: int | None) -> None:
        self.plan = plan
        self.server = server
        self.cpu = cpu

    def run(self, runner: str, concurrency: int, requests: int, warmup: int) -> dict:
        command = [sys.executable, str(RUNNER), runner, "--url", self.server.base_url]
        command += ["--concurrency", str(concurrency), "--requests", str(requests)]
        command += ["--warmup", str(warmup)]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode:
            sys.exit(f"runner {runner} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def throughput(self) -> list[dict[str, Any]]:
        """Every runner at every load; each of ours next to its counterpart."""
        rows: list[dict[str, Any]] = []
        for round_ in range(self.plan.rounds):
            for concurrency, requests, warmup in self.plan.loads:
                shift = round_ % len(OURS)
                order = [FLOOR]
                for index, ours in enumerate(OURS[shift:] + OURS[:shift]):
                    pair = [BASELINES[ours], ours]
                    order += pair[::-1] if (round_ + index) % 2 else pair
                results = {}
                for runner in order:
                    result = self.run(runner, concurrency, requests, warmup)
                    result["round"] = round_
                    self.show(round_, result)
                    results[runner] = result
                for ours in OURS:
                    mine, base = results[ours], results[BASELINES[ours]]
                    for key, ratio in RATIOS:
                        mine[ratio] = mine[key] / base[key]
                rows += results.values()
        return rows

    def show(self, round_: int, result: dict[str, Any]) -> None:
        print(
            f"  round {round_ + 1}/{self.plan.rounds}  c={result['concurrency']:<3} "
            f"{result['runner']:<15} {result['rps']:8.0f} req/s "
            f"{result['cpu_us']:7.1f} us CPU/req "
            f"(GC {result['gc_us']:5.1f}, {result['gc_passes']:5} passes)  "
            f"server busy {result['server_busy']:4.0%}",
            flush=True,
        )

    def memory(self) -> dict[str, float]:
        """Peak RSS of long streams: ours at two lengths, raw at the longer."""
        plan = self.plan
        runs = [
            (BASELINES["stream"], plan.memory_large),
            ("stream", plan.memory_large),
            ("stream", plan.memory_small),
        ]
        peaks: dict[tuple[str, int], list[int]] = {run: [] for run in runs}
        for repeat in range(plan.memory_repeats):
            for runner, requests in runs:
                result = self.run(runner, 64, requests, 500)
                peaks[runner, requests].append(result["rss_kib"])
                print(
                    f"  memory {repeat + 1}/{plan.memory_repeats}  {runner:<15} "
                    f"{requests:>7,} renames  "
                    f"peak RSS {result['rss_kib'] / 1024:6.1f} MiB  "
                    f"({result['rps']:.0f} req/s)",
                    flush=True,
                )
        raw_large, large, small = (statistics.median(peaks[run]) for run in runs)
        return {
            "large": plan.memory_large,
            "small": plan.memory_small,
            "raw_large_kib": raw_large,
            "stream_large_kib": large,
            "stream_small_kib": small,
            "vs_raw": large / raw_large,
            "growth": large / small,
        }


def cores() -> tuple[int | None, int | None]:
    """One core for the server and another for the runners, if there are two."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE)
    if found:
        model = found.group(1).strip()
    import aiohttp  # noqa: PLC0415

    import dify_async  # noqa: PLC0415

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": aiohttp.__version__,
        "dify_async": dify_async.__version__,
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per runner and concurrency, and medians of the paired ratios."""
    summary = []
    for concurrency in sorted({r["concurrency"] for r in rows}, reverse=True):
        for runner in RUNNERS:
            mine = [
                r
                for r in rows
                if r["concurrency"] == concurrency and r["runner"] == runner
            ]
            row: dict[str, Any] = {
                "runner": runner,
                "concurrency": concurrency,
                "runs": len(mine),
            }
            for key in ("rps", "cpu_us", "gc_us", "rss_kib", "server_busy"):
                row[key] = statistics.median(r[key] for r in mine)
            if runner in OURS:
                for _, ratio in RATIOS:
                    row[ratio] = statistics.median(r[ratio] for r in mine)
                    row[f"{ratio}_range"] = [
                        min(r[ratio] for r in mine),
                        max(r[ratio] for r in mine),
                    ]
            summary.append(row)
    return summary


def targets(
    summary: list[dict[str, Any]], mem: dict[str, float]
) -> list[tuple[str, str, bool]]:
    checks = []
    for row in summary:
        if row["runner"] not in OURS:
            continue
        label = f"{LABELS[row['runner']]}, concurrency {row['concurrency']}"
        rps, cpu = row["rps_ratio"], row["cpu_ratio"]
        floor = MIN_THROUGHPUT
        if row["runner"] == "gather" and row["concurrency"] == 64:
            floor = MIN_GATHER_THROUGHPUT
        checks += [
            (f"throughput, {label}: >= {floor:.2f}", measured(row, "rps_ratio"),
             rps >= floor),
            (f"CPU per request, {label}: <= {MAX_CPU:.2f}",
             measured(row, "cpu_ratio"), cpu <= MAX_CPU),
        ]  # fmt: skip
    large, small = f"{mem['large']:,}", f"{mem['small']:,}"
    versus_raw = f"peak RSS, rename_stream, {large} renames: <= {MAX_STREAM_RSS:.2f}"
    growth = f"peak RSS, rename_stream, {large} over {small}: <= {MAX_RSS_GROWTH:.2f}"
    checks += [
        (versus_raw, f"{mem['vs_raw']:.3f}", mem["vs_raw"] <= MAX_STREAM_RSS),
        (growth, f"{mem['growth']:.3f}", mem["growth"] <= MAX_RSS_GROWTH),
    ]
    return checks


def measured(row: dict[str, Any], ratio: str) -> str:
    """A ratio's median, and the lowest and highest of its pairs."""
    low, high = row[f"{ratio}_range"]
    return f"{row[ratio]:.3f} ({low:.2f} to {high:.2f})"


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| runner | concurrency | requests/s | ratio | CPU µs/request | ratio "
        "| of which GC | peak RSS MiB | ratio | server CPU busy |"
    )
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in summary:
        ours = row["runner"] in OURS

        def ratio(key: str, row: dict[str, Any] = row, ours: bool = ours) -> str:
            return f"{row[key]:.2f}" if ours else ""

        lines.append(
            f"| {LABELS[row['runner']]} | {row['concurrency']} "
            f"| {row['rps']:,.0f} | {ratio('rps_ratio')} "
            f"| {row['cpu_us']:.1f} | {ratio('cpu_ratio')} "
            f"| {row['gc_us']:.1f} "
            f"| {row['rss_kib'] / 1024:.1f} | {ratio('rss_ratio')} "
            f"| {row['server_busy']:.0%} |"
        )
    return "\n".join(lines)


def memory_table(mem: dict[str, float]) -> str:
    mib, raw = 1024, mem["raw_large_kib"]
    rows = [
        (f"{LABELS[BASELINES['stream']]}, {mem['large']:,} renames", raw),
        (f"rename_stream, {mem['large']:,} renames", mem["stream_large_kib"]),
        (f"rename_stream, {mem['small']:,} renames", mem["stream_small_kib"]),
    ]
    lines = ["| run | peak RSS MiB | ratio to raw |", "|---|--:|--:|"]
    lines += [f"| {name} | {kib / mib:.1f} | {kib / raw:.2f} |" for name, kib in rows]
    return "\n".join(lines)


def targets_table(checks: list[tuple[str, str, bool]]) -> str:
    lines = ["| target (ours over raw) | measured | result |", "|---|--:|---|"]
    lines += [
        f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |"
        for name, value, ok in checks
    ]
    return "\n".join(lines)


def chart(summary: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib as mpl  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no chart")
        return
    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    concurrencies = sorted({row["concurrency"] for row in summary}, reverse=True)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    width = 0.84 / len(RUNNERS)
    for axis, key, title in (
        (axes[0], "rps", "Requests per second (higher is better)"),
        (axes[1], "cpu_us", "Client CPU µs per request (lower is better)"),
    ):
        for index, runner in enumerate(RUNNERS):
            by_load = {
                row["concurrency"]: row[key]
                for row in summary
                if row["runner"] == runner
            }
            offset = (index - (len(RUNNERS) - 1) / 2) * width
            bars = axis.bar(
                [i + offset for i in range(len(concurrencies))],
                [by_load[c] for c in concurrencies],
                width,
                label=LABELS[runner],
                color=COLORS[runner],
            )
            axis.bar_label(bars, fmt="%.0f", fontsize=6, padding=2)
        axis.set_xticks(range(len(concurrencies)))
        axis.set_xticklabels([f"concurrency {c}" for c in concurrencies])
        axis.set_title(title, fontsize=10)
        axis.margins(y=0.12)
        axis.spines[["top", "right"]].set_visible(False)
    figure.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncols=4,
        fontsize=8,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def update_docs(block: str) -> None:
    text = DOCS.read_text()
    if not BLOCK.search(text):
        print(f"{DOCS} has no results block: not updated")
        return
    # Blank lines around the block, so that no table runs into a marker.
    DOCS.write_text(BLOCK.sub(lambda m: f"{m.group(1)}\n{block}\n\n{m.group(2)}", text))


def report(
    info: dict[str, str],
    plan: Plan,
    summary: list[dict[str, Any]],
    mem: dict[str, float],
    checks: list[tuple[str, str, bool]],
) -> str:
    loads = ", ".join(f"{n:,} renames at concurrency {c}" for c, n, _ in plan.loads)
    measured = (
        f"Measured on: {info['cpu']} ({info['cores']} cores), {info['os']}, "
        f"{info['python']}, aiohttp {info['aiohttp']}, dify_async "
        f"{info['dify_async']}; {plan.rounds} rounds of {loads}."
    )
    streamed = (
        f"Memory, {mem['large']:,} and {mem['small']:,} renames through a stream "
        "with 64 in flight:"
    )
    parts = [measured, table(summary), streamed, memory_table(mem)]
    return "\n\n".join([*parts, "Targets:", targets_table(checks)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not write the chart and the docs (implied by --quick)",
    )
    args = parser.parse_args()
    plan = Plan(quick=args.quick, rounds=args.rounds)
    started = time.perf_counter()
    server_cpu, client_cpu = cores()
    info = machine()
    print(
        f"{info['cpu']}, {info['cores']} cores; server on core {server_cpu}, "
        f"runners on core {client_cpu}; {plan.rounds} rounds"
    )
    with ServerProcess(cpu=server_cpu) as server:
        bench = Bench(plan, server, client_cpu)
        rows = bench.throughput()
        mem = bench.memory()
    summary = summarize(rows)
    checks = targets(summary, mem)
    text = report(info, plan, summary, mem, checks)
    print(f"\n{text}\n\n(took {time.perf_counter() - started:.0f} s)")

    RESULTS.mkdir(exist_ok=True)
    results = {"machine": info, "rounds": plan.rounds, "loads": plan.loads}
    results |= {"summary": summary, "memory": mem, "targets": checks, "runs": rows}
    name = "quick.json" if plan.quick else "latest.json"
    (RESULTS / name).write_text(json.dumps(results, indent=1))
    if not (plan.quick or args.no_docs):
        chart(summary, CHART)
        update_docs(text)
    failed = [name for name, _, ok in checks if not ok]
    for name in failed:
        print(f"FAIL: {name}")
    print("all targets met" if not failed else f"{len(failed)} target(s) missed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
