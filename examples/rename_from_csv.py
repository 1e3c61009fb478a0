"""Rename every conversation listed in a CSV file, many at a time.

The file has a header row with the columns ``conversation_id``, ``user`` and
``name``; an empty ``name`` lets Dify generate one from the conversation's
first message::

    conversation_id,user,name
    45701982-8118-4bc5-8e9b-64562b4555f2,user-42,Trip plans
    9d1c2f4e-2b7a-4c55-9a43-0e6f1d3b8a21,user-42,

Run it with the key in the environment::

    export DIFY_API_KEY=app-...
    python examples/rename_from_csv.py renames.csv --concurrency 16 \
        --report results.csv

Rows are read lazily and at most ``--concurrency`` renames are in flight, so a
file of a million rows needs no more memory than one of ten. A row that cannot
be a valid rename (a malformed id, say) is skipped and reported; one failed
rename never stops the others. The optional report has one line per row.

No Dify at hand? ``--fake`` starts a fake Dify server inside the program,
holding the file's conversations, and renames them there; without a file, it
renames a sample batch::

    python examples/rename_from_csv.py --fake
    python examples/rename_from_csv.py renames.csv --fake

The exit status is 0 when every row was renamed, 1 when some were not, and 2
when the batch could not start (no API key or no file, for example).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from dify_async import (
    AsyncDifyClient,
    Conversation,
    DifyError,
    InvalidRequestError,
    RenameRequest,
)
from dify_async.testing import FakeDifyServer

COLUMNS = ("conversation_id", "user", "name")

Report = Callable[[Sequence[str]], object]
"""Takes one line of the report (``csv.writer(...).writerow``)."""


class Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: message`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def read_requests(
    path: Path, skipped: list[int], report: Report | None
) -> Iterator[RenameRequest]:
    """Yield a rename per row; note the lines that are not valid renames."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: missing column(s): {', '.join(sorted(missing))}")
        for row in reader:
            name = row["name"] or None
            try:
                yield RenameRequest(
                    conversation_id=row["conversation_id"],
                    user=row["user"],
                    name=name,
                    auto_generate=name is None,
                )
            except InvalidRequestError as error:
                skipped.append(reader.line_num)
                print(f"{path}:{reader.line_num}: skipped: {error}", file=sys.stderr)
                if report is not None:
                    report((row["conversation_id"], row["user"], "skipped", str(error)))


async def rename_all(
    path: Path, *, concurrency: int, report: Report | None = None, fake: bool = False
) -> tuple[int, int]:
    """Rename every row; return how many rows were renamed and how many were not."""
    renamed = total = 0
    skipped: list[int] = []
    async with connect(path, fake=fake) as client:
        outcomes = client.rename_stream(
            read_requests(path, skipped, report), concurrency=concurrency
        )
        async for request, outcome in outcomes:
            total += 1
            if isinstance(outcome, Conversation):
                renamed += 1
                result, detail = "renamed", outcome.name
            else:
                result, detail = type(outcome).__name__, str(outcome)
                print(f"{request.conversation_id}: {outcome}", file=sys.stderr)
            if report is not None:
                report((request.conversation_id, request.user, result, detail))
    return renamed, total - renamed + len(skipped)


@contextlib.asynccontextmanager
async def connect(path: Path, *, fake: bool) -> AsyncIterator[AsyncDifyClient]:
    """A client for the Dify of the environment, or for a fake one.

    The fake server is seeded with a conversation for each row of the file,
    with a first message, so that an empty name can be generated.
    """
    if not fake:
        async with AsyncDifyClient() as client:
            yield client
        return
    async with FakeDifyServer() as server:
        for conversation_id, user in conversations_in(path):
            server.add_conversation(
                user=user,
                conversation_id=conversation_id,
                messages=[f"A question about ticket {conversation_id[:8]}"],
            )
        print(f"(a fake Dify server at {server.base_url})", file=sys.stderr)
        async with AsyncDifyClient(server.api_key, base_url=server.base_url) as client:
            yield client


def conversations_in(path: Path) -> set[tuple[str, str]]:
    """The (id, user) pairs of the file's rows that name a valid conversation."""
    found = set()
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            try:
                conversation_id = str(uuid.UUID(row.get("conversation_id") or ""))
            except ValueError:
                continue  # reported when the rows are read for renaming
            if row.get("user"):
                found.add((conversation_id, row["user"]))
    return found


def write_sample(folder: Path, rows: int = 20) -> Path:
    """Write a sample input file; every fifth row lets Dify choose the name."""
    path = folder / "sample.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for n in range(rows):
            name = "" if n % 5 == 0 else f"Ticket #{1000 + n}"
            writer.writerow((str(uuid.uuid4()), "user-42", name))
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, rename, and return the exit status."""
    parser = Parser(description="Rename the Dify conversations listed in a CSV file.")
    parser.add_argument("csv_file", type=Path, nargs="?")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="renames in flight at most"
    )
    parser.add_argument(
        "--report", type=Path, help="write one line per row to this CSV file"
    )
    parser.add_argument(
        "--fake",
        action="store_true",
        help="rename on a fake Dify server started by this program "
        "(a sample batch when no file is given)",
    )
    args = parser.parse_args(argv)
    if not args.fake and not os.environ.get("DIFY_API_KEY"):
        parser.error("set DIFY_API_KEY or pass --fake")
    if not args.fake and args.csv_file is None:
        parser.error("give the CSV file to read, or --fake for a sample batch")
    if args.csv_file is not None and not args.csv_file.is_file():
        parser.error(f"no such file: {args.csv_file}")
    # Show the client's retry lines (WARNING, on the "dify_async" logger).
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")

    with contextlib.ExitStack() as stack:
        if args.csv_file is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            args.csv_file = write_sample(Path(folder))
        report = None
        if args.report is not None:
            file = stack.enter_context(
                args.report.open("w", newline="", encoding="utf-8")
            )
            report = csv.writer(file).writerow
            report(("conversation_id", "user", "outcome", "detail"))
        try:
            renamed, failed = asyncio.run(
                rename_all(
                    args.csv_file,
                    concurrency=args.concurrency,
                    report=report,
                    fake=args.fake,
                )
            )
        except DifyError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(f"renamed {renamed}, not renamed {failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
