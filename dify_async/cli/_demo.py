"""The ``demo`` command: the batch machinery against an embedded fake Dify.

The demo plants its errors where it can predict their outcome, says which
before the run, marks them "(expected)" when they show, and at the end checks
every outcome and count against the fake server's own records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Iterator
from typing import Final

from dify_async import AsyncDifyClient, Conversation, DifyError, RenameRequest
from dify_async.testing import FakeDifyServer, Fault

from ._inputs import Row
from ._messages import UsageError, describe, say
from ._parser import EXIT_FAILED, EXIT_OK
from ._progress import Progress
from ._runner import Batch, RetryCounter
from ._signals import signals_cancel
from ._summary import Summary

__all__ = ["demo_command"]

_TOPICS: Final = (
    "Refund for order",
    "Password reset",
    "Shipping delay",
    "Invoice question",
    "Upgrade to Pro",
    "Bug report",
    "API quota",
    "Account deletion",
)
_AUTO_QUESTION: Final = "What are the specs of the iPhone 15 Pro?"
_SEED_NAME: Final = "New conversation"
_DEMO_USERS: Final = 20
_MIN_DEMO_COUNT: Final = 10
_AUTO_INDEX: Final = 1
_WRONG_USER_INDEX: Final = 2
_WRONG_USER_FAILURE: Final = "404 not_found"
_RENAMED: Final = "renamed"
_MAX_PROBLEMS_SHOWN: Final = 20

_FaultPlan = tuple[str, float, tuple[Fault, ...]]
"""A kind of fault: its label, the share of renames it strikes, its faults."""


def _fault_plans() -> list[_FaultPlan]:
    return [
        ("gateway 502", 0.02, (Fault.gateway(502),)),
        ("gateway 503", 0.01, (Fault.gateway(503),)),
        (
            "gateway 504 after the rename was stored",
            0.01,
            (Fault.gateway(504, after_processing=True),),
        ),
        ("429 with Retry-After: 1", 0.01, (Fault.rate_limit(retry_after="1"),)),
        ("connection dropped", 0.01, (Fault.disconnect(),)),
        (
            "connection dropped after the rename was stored",
            0.005,
            (Fault.disconnect(after_processing=True),),
        ),
        ("502, then 503 on the retry", 0.005, (Fault.gateway(502), Fault.gateway(503))),
    ]


class _Demo:
    """The demo's fake server, its requests, what it planted and expects."""

    def __init__(self, server: FakeDifyServer) -> None:
        self.server = server
        self.requests: list[RenameRequest] = []
        self.owners: list[str] = []
        self.injected = 0
        self.fault_lines: list[str] = []
        self.outcomes: dict[str, Conversation | DifyError] = {}

    def seed(self, count: int) -> None:
        """Store *count* conversations and build one rename for each."""
        users = [f"user-{k:02d}" for k in range(1, _DEMO_USERS + 1)]
        for n in range(count):
            owner = users[n % len(users)]
            topic = _TOPICS[n % len(_TOPICS)]
            first = _AUTO_QUESTION if n == _AUTO_INDEX else f"Hi, I need help: {topic}"
            cid = self.server.add_conversation(
                user=owner, name=_SEED_NAME, messages=[first]
            )
            self.owners.append(owner)
            if n == _AUTO_INDEX:
                self.requests.append(RenameRequest(cid, owner, auto_generate=True))
            elif n == _WRONG_USER_INDEX:
                intruder = users[(n + 1) % len(users)]
                self.requests.append(RenameRequest(cid, intruder, f"{topic} #{n}"))
            else:
                self.requests.append(RenameRequest(cid, owner, f"{topic} #{n}"))

    def inject(self, rng: random.Random) -> None:
        """Spread the faults over the explicit renames, one strike each."""
        # The auto_generate and the 404 stay clean, so that their outcome is
        # the one they are there to show.
        candidates = list(range(_WRONG_USER_INDEX + 1, len(self.requests)))
        rng.shuffle(candidates)
        for label, share, faults in _fault_plans():
            wanted = max(1, round(share * len(self.requests)))
            chosen = [candidates.pop() for _ in range(min(wanted, len(candidates)))]
            for index in chosen:
                cid = self.requests[index].conversation_id
                for fault in faults:
                    self.server.inject_fault(fault, conversation_id=cid)
                    self.injected += 1
            self.fault_lines.append(f"{len(chosen):>5,} x {label}")

    def keep(self, request: RenameRequest, outcome: Conversation | DifyError) -> None:
        """Remember an outcome, to check it against the server afterwards."""
        self.outcomes[request.conversation_id] = outcome

    def is_expected(self, request: RenameRequest, error: DifyError) -> bool:
        """Whether a failure is the one the demo planted."""
        wrong = self.requests[_WRONG_USER_INDEX]
        return request == wrong and error.label == _WRONG_USER_FAILURE

    def _expectations(self) -> Iterator[tuple[int, RenameRequest, str, str]]:
        """Each request, the outcome it should end with, the name it should leave."""
        for index, request in enumerate(self.requests):
            if index == _AUTO_INDEX:
                yield index, request, _RENAMED, _AUTO_QUESTION
            elif index == _WRONG_USER_INDEX:
                yield index, request, _WRONG_USER_FAILURE, _SEED_NAME
            else:
                yield index, request, _RENAMED, request.name or ""

    def check(self, summary: Summary) -> tuple[int, list[str]]:
        """Compare the run with the server's records.

        Returns:
            How many explicit renames are stored as requested, and every
            discrepancy found.
        """
        problems = []
        as_requested = 0
        for index, request, outcome, name in self._expectations():
            cid = request.conversation_id
            ended = _ended(self.outcomes.get(cid))
            stored = self.server.get_conversation(cid).name
            if (ended, stored) != (outcome, name):
                problems.append(
                    f"{cid}: {ended}, named {stored!r}; expected {outcome}, "
                    f"named {name!r}"
                )
            elif index not in (_AUTO_INDEX, _WRONG_USER_INDEX):
                as_requested += 1
        server = self.server
        for what, count, expected in (
            ("requests received", server.requests_received, self.expected_requests),
            (
                "requests counted by the client",
                summary.requests,
                self.expected_requests,
            ),
            ("LLM calls", server.llm_calls, 1),
            ("failures", dict(summary.failures), {_WRONG_USER_FAILURE: 1}),
        ):
            if count != expected:
                problems.append(f"{what}: {count}, expected {expected}")
        return as_requested, problems

    @property
    def expected_requests(self) -> int:
        """One request per rename, plus one per planted fault."""
        return len(self.requests) + self.injected


def _ended(outcome: Conversation | DifyError | None) -> str:
    if outcome is None:
        return "no outcome"
    return _RENAMED if isinstance(outcome, Conversation) else outcome.label


def demo_command(args: argparse.Namespace) -> int:
    """Run ``dify-async demo``.

    Args:
        args: The parsed command line.

    Returns:
        The exit status: 0 when everything went as the demo expected.

    Raises:
        UsageError: ``--count`` is too small.
    """
    if args.count < _MIN_DEMO_COUNT:
        raise UsageError(f"--count must be at least {_MIN_DEMO_COUNT}")
    with FakeDifyServer() as server:
        demo = _Demo(server)
        demo.seed(args.count)
        demo.inject(random.Random(args.seed))  # noqa: S311  (placement, not secrets)
        return asyncio.run(_demo(args, demo))


def _introduce(args: argparse.Namespace, demo: _Demo) -> None:
    server = demo.server
    wrong = demo.requests[_WRONG_USER_INDEX]
    say(
        f"dify-async demo: renaming {len(demo.requests):,} conversations on an "
        "embedded fake Dify server"
    )
    say(f"  server       {server.base_url}  (fake Dify {server.version})")
    say(f"  concurrency  {args.concurrency}")
    if args.rate:
        say(f"  max rate     {args.rate:g} requests/s")
    say(
        f"  faults       {demo.injected:,} planted, each strikes one request; "
        "all expected, each retried to success:"
    )
    for text in demo.fault_lines:
        say(f"              {text}")
    say(
        "  also         one auto_generate rename (an LLM call on the server)\n"
        f"               one rename sent as the wrong user ({wrong.user}): an "
        f"expected {_WRONG_USER_FAILURE}, not retried"
    )
    say('Planted errors are marked "(expected)" when they show.')
    say()
    sys.stdout.flush()


async def _demo(args: argparse.Namespace, demo: _Demo) -> int:
    _introduce(args, demo)
    server = demo.server
    progress = Progress(
        len(demo.requests), enabled=not args.no_progress, stream=sys.stderr
    )
    retries = RetryCounter(
        progress.message if args.verbose else None, note=" (expected)"
    )
    summary = Summary(
        total=len(demo.requests),
        failure_notes={_WRONG_USER_FAILURE: "expected"},
        resumable=False,
    )
    async with AsyncDifyClient(
        server.api_key,
        base_url=server.base_url,
        max_rate=args.rate,
        connection_limit=args.concurrency,
        on_retry=retries,
    ) as client:
        batch = Batch(
            client,
            args.concurrency,
            progress,
            retries,
            summary,
            where="request",
            on_outcome=demo.keep,
            expected=demo.is_expected,
        )
        rows = (
            Row(n, request=request, raw_id=request.conversation_id)
            for n, request in enumerate(demo.requests, start=1)
        )
        with signals_cancel(summary.interrupt):
            await batch.run(rows)
    _report(demo, summary)
    if summary.interrupted is not None:
        return summary.exit_status
    return _server_check(demo, summary)


def _report(demo: _Demo, summary: Summary) -> None:
    say()
    auto = demo.requests[_AUTO_INDEX]
    generated = demo.outcomes.get(auto.conversation_id)
    if isinstance(generated, Conversation):
        say(
            f"auto_generate   {auto.conversation_id}  titled by the server's LLM: "
            f"{json.dumps(generated.name, ensure_ascii=False)}"
        )
    wrong = demo.requests[_WRONG_USER_INDEX]
    refused = demo.outcomes.get(wrong.conversation_id)
    if isinstance(refused, DifyError):
        say(
            f"expected error  {wrong.conversation_id}  {describe(refused)}  "
            f"(sent as {wrong.user}; it belongs to {demo.owners[_WRONG_USER_INDEX]}; "
            "not retried)"
        )
    say()
    say("\n".join(summary.lines()))
    say()


def _server_check(demo: _Demo, summary: Summary) -> int:
    server = demo.server
    as_requested, problems = demo.check(summary)
    explicit = len(demo.requests) - 2
    received, stored = server.requests_received, server.renames_applied
    width = len(f"{max(received, stored):,}")
    say("Server check (the fake server's own records):")
    say(
        f"  requests received  {received:>{width},}  = {len(demo.requests):,} "
        f"renames + {received - len(demo.requests):,} retries"
    )
    say(
        f"  renames stored     {stored:>{width},}  = {summary.succeeded:,} "
        f"successes + {stored - summary.succeeded:,} stored again by a retry "
        "whose first answer was lost"
    )
    say(f"  LLM calls          {server.llm_calls:>{width},}")
    say(
        f"  names              {as_requested:>{width},}  of {explicit:,} explicit "
        "renames stored exactly as requested"
    )
    if problems:
        for problem in problems[:_MAX_PROBLEMS_SHOWN]:
            say(f"  UNEXPECTED: {problem}")
        return EXIT_FAILED
    say()
    say(
        "Everything behaved as expected: every planted transient fault was "
        "retried to success, and the expected 404 was reported once and not "
        "retried."
    )
    return EXIT_OK
