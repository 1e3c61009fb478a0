"""The ``batch`` command: every row through ``rename_stream``, every outcome kept.

Rows are read as the batch goes, at most ``--concurrency`` renames are in
flight, each finished row is written to the results file at once, and the
summary counts every row: renamed, skipped, failed, in flight when the run was
interrupted, or not reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import attrs

from dify_async import (
    AsyncDifyClient,
    AuthenticationError,
    Conversation,
    DifyError,
    PermissionDeniedError,
    RenameRequest,
    RetryEvent,
)

from ._connection import make_client
from ._inputs import InputError, Row, count_rows, open_input, read_rows
from ._messages import (
    UsageError,
    describe,
    error_record,
    hint,
    os_reason,
    say,
    warn,
)
from ._progress import Progress
from ._results import Results, resume_command
from ._signals import signals_cancel
from ._summary import UNTITLED_NOTE, Summary, is_untitled

__all__ = ["Batch", "RetryCounter", "batch_command"]

Outcome = Conversation | DifyError


class RetryCounter:
    """Counts the client's retries per conversation, from its ``on_retry`` events.

    Args:
        echo: Shows a line per retry, if given.
        note: Appended to each line shown.
    """

    def __init__(self, echo: Callable[[str], None] | None, *, note: str = "") -> None:
        self._pending: Counter[str] = Counter()
        self._echo = echo
        self._note = note

    def __call__(self, event: RetryEvent) -> None:
        """Count one retry (the client's ``on_retry`` hook).

        Args:
            event: What failed and when the next attempt is.
        """
        self._pending[event.conversation_id] += 1
        if self._echo is not None:
            self._echo(
                f"Retrying {event.method} {event.url} in {event.wait:.2f} s "
                f"(attempt {event.attempt} failed: {event.error.label}){self._note}"
            )

    def take(self, conversation_id: str) -> int:
        """Return and forget the retries counted for one conversation.

        Args:
            conversation_id: Its canonical id.

        Returns:
            How many retries it needed.
        """
        return self._pending.pop(conversation_id, 0)


@attrs.define
class Batch:
    """Runs rows through ``rename_stream`` and records every outcome.

    Attributes:
        client: The client, open.
        concurrency: Renames in flight at once.
        progress: Where progress and failures are shown.
        retries: The client's ``on_retry`` hook, counting retries.
        summary: Counts what happens.
        results: The results file, if any.
        finished: Ids (UUIDs as ints) renamed by an earlier run.
        where: What a row's number counts (``"line"`` of the input).
        on_outcome: Called with each request and its outcome.
        expected: Says whether a failure was expected (it is then marked so).
    """

    client: AsyncDifyClient
    concurrency: int
    progress: Progress
    retries: RetryCounter
    summary: Summary
    results: Results | None = None
    finished: set[int] = attrs.field(factory=set)
    where: str = "line"
    on_outcome: Callable[[RenameRequest, Outcome], None] | None = None
    expected: Callable[[RenameRequest, DifyError], bool] | None = None
    _pending: dict[str, int] = attrs.field(factory=dict)
    _seen: dict[int, int] = attrs.field(factory=dict)

    async def run(self, rows: Iterable[Row]) -> Summary:
        """Rename every row.

        Args:
            rows: The input's rows.

        Returns:
            The summary, also when the run was interrupted or the input broke
            off.
        """
        started = time.monotonic()
        stream = self.client.rename_stream(
            self._requests(rows), concurrency=self.concurrency
        )
        try:
            async with contextlib.aclosing(stream):
                async for request, outcome in stream:
                    self._record(request, outcome)
        except asyncio.CancelledError:
            if self.summary.interrupted is None:
                raise
        except InputError as exc:
            self.summary.input_error = str(exc)
            self.progress.message(f"error: {exc}")
        finally:
            self.summary.in_flight = len(self._pending)
            self.summary.elapsed = time.monotonic() - started
            self.progress.close()
        return self.summary

    def _requests(self, rows: Iterable[Row]) -> Iterator[RenameRequest]:
        iterator = iter(rows)
        while not self.summary.stopped:
            try:
                row = next(iterator)
            except StopIteration:
                return
            except InputError as exc:
                raise InputError(f"cannot read the input: {exc}") from None
            except (OSError, csv.Error) as exc:
                where = f" after {self.where} {self._last_line}" if self._seen else ""
                reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
                raise InputError(f"cannot read the input{where}: {reason}") from exc
            self.summary.rows += 1
            request = self._admit(row)
            if request is not None:
                yield request

    @property
    def _last_line(self) -> int:
        return max(self._seen.values(), default=0)

    def _admit(self, row: Row) -> RenameRequest | None:
        """Return the row's request if it is to be sent now."""
        if row.request is None:
            self._refuse(row, row.problem or "bad row")
            return None
        key = uuid.UUID(row.request.conversation_id).int
        first = self._seen.setdefault(key, row.line)
        if first != row.line:
            self._refuse(row, f"conversation_id repeats {self.where} {first}")
            return None
        if key in self.finished:
            self.summary.skipped += 1
            self.progress.advance()
            return None
        self._pending[row.request.conversation_id] = row.line
        return row.request

    def _refuse(self, row: Row, problem: str) -> None:
        self.summary.failures["bad row"] += 1
        self.progress.message(f"{self.where} {row.line}: bad row: {problem}")
        self.progress.advance(failed=True)
        self._write(
            {
                "line": row.line,
                "id": row.raw_id,
                "ok": False,
                "error": "bad row",
                "status": None,
                "code": None,
                "message": problem,
            }
        )

    def _record(self, request: RenameRequest, outcome: Outcome) -> None:
        cid = request.conversation_id
        line = self._pending.pop(cid)
        retries = self.retries.take(cid)
        attempts = outcome.attempts if isinstance(outcome, DifyError) else 1 + retries
        summary = self.summary
        summary.requests += attempts
        if attempts > 1:
            summary.retried += 1
            summary.retries += attempts - 1
        record: dict[str, object] = {"line": line, "id": cid}
        where = f"{self.where} {line}: {cid}"
        if isinstance(outcome, Conversation):
            summary.succeeded += 1
            record.update(ok=True, name=outcome.name, attempts=attempts)
            if is_untitled(request, outcome):
                summary.untitled += 1
                record["untitled"] = True
                self.progress.message(f"{where}: untitled: {UNTITLED_NOTE}")
            self.progress.advance()
        else:
            summary.failures[outcome.label] += 1
            record.update(ok=False, **error_record(outcome), attempts=attempts)
            expected = self.expected is not None and self.expected(request, outcome)
            mark = " (expected)" if expected else ""
            self.progress.message(f"{where}: {describe(outcome)}{mark}")
            self.progress.advance(failed=True)
            found = hint(outcome, self.client.base_url)
            if found is not None:
                summary.add_hint(found)
            if isinstance(outcome, AuthenticationError | PermissionDeniedError):
                # Every other row would fail the same way: start no new ones.
                summary.stopped = (
                    f"the server refused the app ({outcome.label}); "
                    "rows not reached were not attempted"
                )
        self._write(record)
        if self.on_outcome is not None:
            self.on_outcome(request, outcome)

    def _write(self, record: dict[str, object]) -> None:
        if self.results is None:
            return
        try:
            self.results.write(record)
        except OSError as exc:
            problem = f"cannot write {self.results.path}: {os_reason(exc)}"
            self.results = None  # nothing more can be recorded
            self.progress.message(f"error: {problem}")
            self.summary.stopped = (
                f"{problem}; rows not reached were not attempted, and the rows "
                "still in flight will not be recorded"
            )


def batch_command(args: argparse.Namespace) -> int:
    """Run ``dify-async batch``.

    Everything that can be checked is checked before anything is sent: the
    options, the key, the input (it opens, it is UTF-8 at first, it has rows)
    and the results file.

    Args:
        args: The parsed command line.

    Returns:
        The exit status.

    Raises:
        UsageError: A problem found before anything was sent.
    """
    if args.resume and args.output is None:
        raise UsageError("--resume needs --output (the results file to resume)")
    make_client(args)  # a missing key or a refused option, found up front
    source = open_input(args.file)
    try:
        rows = read_rows(source, args.file, args.format, args.user)
        results = None
        if args.output is not None:
            results = Results.open(args.output, resume=args.resume)
        try:
            if results is not None and results.unreadable:
                warn(
                    f"warning: {results.unreadable} line(s) of {args.output} could "
                    "not be read; their rows will be renamed again"
                )
            total = count_rows(args.file, args.format)
            return asyncio.run(_batch(args, rows, results, total))
        finally:
            if results is not None:
                results.close()
    finally:
        if source is not sys.stdin.buffer:
            source.close()


async def _batch(
    args: argparse.Namespace,
    rows: Iterator[Row],
    results: Results | None,
    total: int | None,
) -> int:
    summary = Summary(total=total, resumable=results is not None)
    progress = Progress(total, enabled=not args.no_progress, stream=sys.stderr)
    retries = RetryCounter(progress.message if args.verbose else None)
    client = make_client(
        args, max_rate=args.rate, connections=args.concurrency, on_retry=retries
    )
    try:
        async with client:
            batch = Batch(
                client,
                args.concurrency,
                progress,
                retries,
                summary,
                results=results,
                finished=set() if results is None else results.finished,
            )
            with signals_cancel(summary.interrupt):
                await batch.run(rows)
    except asyncio.CancelledError:  # pragma: no cover - a signal as it closes
        if summary.interrupted is None:
            raise
    finally:
        progress.close()
    if args.api_key and args.output is not None and not summary.all_ok:
        summary.add_hint(
            "the command to resume leaves out --api-key: pass it again, or set "
            "DIFY_API_KEY"
        )
    if not summary.all_ok:
        summary.resume_command = resume_command(args)
    if args.json:
        say(json.dumps(summary.as_json()))
    else:
        say("\n".join(summary.lines()))
    return summary.exit_status
