"""The ``dify-async`` command line.

Three commands:

- ``rename``: rename one conversation and print it;
- ``batch``: rename every row of a CSV or JSON Lines file, with bounded
  concurrency, optional pacing, a results file written as renames finish (so
  a killed run can be resumed), progress, and a summary;
- ``demo``: the same batch machinery against an embedded fake Dify server,
  with faults injected, checked against the server's own records at the end.

The API key and base URL come from ``--api-key``/``--base-url`` or from
``DIFY_API_KEY``/``DIFY_BASE_URL``; the key is never printed.

Exit status: 0 when every rename succeeded, 1 when any failed (or a row was
refused), 2 for a usage or configuration error found before starting, and
128 + the signal number when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib
import itertools
import json
import logging
import os
import random
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TextIO, cast

import attrs

from ._client import AsyncDifyClient
from ._converter import converter
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    DifyError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from ._models import Conversation, RenameRequest
from ._version import __version__

if TYPE_CHECKING:
    from .testing import FakeDifyServer, Fault

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"", "0", "false", "f", "no", "n", "off"})
_RENAME_URL: Final = re.compile(r"/conversations/([0-9a-fA-F-]{36})/name")
_BAR_REFRESH: Final = 0.1
_LINE_REPORT_EVERY: Final = 5.0

Format = Literal["csv", "jsonl"]


class _UsageError(Exception):
    """A problem with the command line or its inputs, found before starting."""


class _InputError(Exception):
    """The input file could not be read to the end."""


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _warn(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- entry point ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line and return its exit status.

    Args:
        argv: The arguments, without the program name (default:
            ``sys.argv[1:]``).
        prog: The program name shown in help and errors.

    Returns:
        0 when everything succeeded, 1 when a rename failed, 2 for a usage
        error, 128 + N when interrupted by signal N.
    """
    parser = _build_parser(prog)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _UsageError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        _warn(f"{parser.prog}: interrupted")
        return 128 + int(signal.SIGINT)


def _build_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "dify-async",
        description="Rename Dify conversations from the command line.",
        epilog=(
            "The API key and base URL default to DIFY_API_KEY and DIFY_BASE_URL. "
            "Prefer the environment variable to --api-key: command lines are "
            "visible to other users of the machine."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help="the app's API key (default: $DIFY_API_KEY)",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        help="the Service API base URL, /v1 included (default: $DIFY_BASE_URL, "
        "then https://api.dify.ai/v1)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="per attempt (default: 60)",
    )
    group.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=2,
        metavar="N",
        help="retries of a transient failure (default: 2)",
    )

    rename = commands.add_parser(
        "rename",
        parents=[connection],
        help="rename one conversation",
        description="Rename one conversation and print it.",
    )
    rename.add_argument("conversation_id", metavar="CONVERSATION_ID")
    rename.add_argument("--user", required=True, help="the end user who owns it")
    how = rename.add_mutually_exclusive_group(required=True)
    how.add_argument("--name", help="the new name, stored exactly as given")
    how.add_argument(
        "--auto-generate",
        action="store_true",
        help="let the server title it from its first message (an LLM call)",
    )
    rename.add_argument("--json", action="store_true", help="print JSON")
    rename.set_defaults(handler=_rename_command)

    batch = commands.add_parser(
        "batch",
        parents=[connection],
        help="rename every row of a CSV or JSON Lines file",
        description=(
            "Rename every row of FILE: CSV with a header row, or JSON Lines, with "
            "the columns or keys conversation_id, user, name, auto_generate. A "
            "row needs a name unless auto_generate is true. Bad rows are "
            "reported with their line number and skipped."
        ),
    )
    batch.add_argument("file", metavar="FILE", help="the input file, or - for stdin")
    batch.add_argument(
        "--format",
        choices=("auto", "csv", "jsonl"),
        default="auto",
        help="input format (default: from the file's extension, else its content)",
    )
    batch.add_argument(
        "--user", help="the user for rows whose user column is missing or empty"
    )
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        default=16,
        metavar="N",
        help="renames in flight at once (default: 16)",
    )
    batch.add_argument(
        "--rate",
        type=_positive_float,
        metavar="PER_SECOND",
        help="at most this many requests per second, retries included",
    )
    batch.add_argument(
        "--output",
        type=Path,
        metavar="RESULTS.jsonl",
        help="write one JSON line per finished row, as it finishes",
    )
    batch.add_argument(
        "--resume",
        action="store_true",
        help="skip the rows already renamed in --output, and append to it",
    )
    batch.add_argument(
        "--no-progress", action="store_true", help="show no progress while running"
    )
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")
    batch.add_argument(
        "-v", "--verbose", action="store_true", help="also show each retry"
    )
    batch.set_defaults(handler=_batch_command)

    demo = commands.add_parser(
        "demo",
        help="rename thousands of conversations on an embedded fake Dify server",
        description=(
            "Start an embedded fake Dify server, seed it with conversations, "
            "inject transient faults (gateway 502/503/504, 429 with "
            "Retry-After, dropped connections), rename them all in one batch, "
            "and check the result against the server's records."
        ),
    )
    demo.add_argument(
        "--count",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="conversations to rename (default: 2000, at least 10)",
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=32,
        metavar="N",
        help="renames in flight at once (default: 32)",
    )
    demo.add_argument(
        "--rate", type=_positive_float, metavar="PER_SECOND", help="pace requests"
    )
    demo.add_argument(
        "--seed", type=int, default=2024, help="seed of the fault placement"
    )
    demo.add_argument(
        "--no-progress", action="store_true", help="show no progress while running"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="also show each retry"
    )
    demo.set_defaults(handler=_demo_command)
    return parser


def _int_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        rule = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(1, text)


def _non_negative_int(text: str) -> int:
    return _int_at_least(0, text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _make_client(
    args: argparse.Namespace, *, max_rate: float | None = None, connections: int = 100
) -> AsyncDifyClient:
    api_key = args.api_key or os.environ.get("DIFY_API_KEY")
    if not api_key:
        raise _UsageError("no API key: pass --api-key or set DIFY_API_KEY")
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    try:
        return AsyncDifyClient(
            api_key,
            base_url=args.base_url or None,
            max_retries=args.max_retries,
            max_rate=max_rate,
            connection_limit=connections,
            **options,
        )
    except InvalidRequestError as exc:  # its message never holds the key
        raise _UsageError(exc.message) from None


# -- describing outcomes -------------------------------------------------------


def _reason(error: DifyError) -> str:
    """A short, stable label for a failure, used to group them."""
    if isinstance(error, APIStatusError):
        return (
            f"{error.status_code} {error.code}"
            if error.code
            else str(error.status_code)
        )
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "connection error"
    return type(error).__name__


def _describe(error: DifyError) -> str:
    text = f"{_reason(error)}: {error.message or '(no message)'}"
    if error.attempts > 1:
        text += f" (after {error.attempts} attempts)"
    return text


def _error_record(error: DifyError) -> dict[str, Any]:
    return {
        "error": type(error).__name__,
        "status": error.status_code if isinstance(error, APIStatusError) else None,
        "code": error.code if isinstance(error, APIStatusError) else None,
        "message": error.message,
    }


def _conversation_json(conversation: Conversation) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(conversation)
    return data


def _when(moment: object) -> str:
    return "-" if moment is None else str(moment).replace("+00:00", " UTC")


# -- rename --------------------------------------------------------------------


def _rename_command(args: argparse.Namespace) -> int:
    try:
        request = RenameRequest(
            args.conversation_id, args.user, args.name, bool(args.auto_generate)
        )
    except InvalidRequestError as exc:
        raise _UsageError(exc.message) from None
    return asyncio.run(_rename(args, request))


async def _rename(args: argparse.Namespace, request: RenameRequest) -> int:
    async with _make_client(args) as client:
        try:
            conversation = await client.rename_conversation(
                request.conversation_id,
                user=request.user,
                name=request.name,
                auto_generate=request.auto_generate,
            )
        except DifyError as error:
            if args.json:
                _say(json.dumps({"ok": False, **_error_record(error)}))
            _warn(f"dify-async: {_describe(error)}")
            return EXIT_FAILED
    if args.json:
        _say(json.dumps(_conversation_json(conversation), ensure_ascii=False))
        return EXIT_OK
    verb = "Generated a name for" if request.auto_generate else "Renamed"
    _say(f"{verb} conversation {conversation.id}")
    _say(f"  name          {_quoted(conversation.name)}")
    _say(f"  status        {conversation.status}")
    if conversation.inputs:
        _say(f"  inputs        {_quoted(conversation.inputs)}")
    if conversation.introduction:
        _say(f"  introduction  {_quoted(conversation.introduction)}")
    _say(f"  created at    {_when(conversation.created_at)}")
    _say(f"  updated at    {_when(conversation.updated_at)}")
    return EXIT_OK


def _quoted(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- reading the input ---------------------------------------------------------


@attrs.frozen
class _Row:
    """One input row: a request, or the reason it cannot become one."""

    line: int
    request: RenameRequest | None = None
    problem: str | None = None
    raw_id: str | None = None


def _parse_flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


def _make_row(
    line: int, fields: Mapping[str, object], default_user: str | None
) -> _Row:
    raw_id = fields.get("conversation_id")
    shown_id = raw_id.strip() if isinstance(raw_id, str) else None
    if not shown_id:
        return _Row(line, problem="no conversation_id")
    auto_generate = _parse_flag(fields.get("auto_generate"))
    if auto_generate is None:
        value = fields.get("auto_generate")
        return _Row(
            line,
            problem=f"auto_generate must be true or false, got {value!r}",
            raw_id=shown_id,
        )
    user = fields.get("user") or default_user
    if not isinstance(user, str):
        return _Row(
            line, problem="no user (add a user column or pass --user)", raw_id=shown_id
        )
    name = fields.get("name") or None
    if name is None and not auto_generate:
        return _Row(
            line, problem="no name and auto_generate is not true", raw_id=shown_id
        )
    try:
        request = RenameRequest(shown_id, user, cast("str | None", name), auto_generate)
    except InvalidRequestError as exc:
        return _Row(line, problem=exc.message, raw_id=shown_id)
    return _Row(line, request=request, raw_id=shown_id)


def _csv_rows(lines: Iterable[str], default_user: str | None) -> Iterator[_Row]:
    """Read the header at once (a bad one is a usage error), then the rows."""
    reader = csv.reader(lines)
    header: list[str] = []
    for cells in reader:
        if any(cell.strip() for cell in cells):
            header = [cell.strip().lower() for cell in cells]
            break
    if header and "conversation_id" not in header:
        raise _UsageError(
            f"line {reader.line_num}: the CSV header has no conversation_id "
            f"column (found: {', '.join(header)})"
        )

    def records() -> Iterator[_Row]:
        consumed = reader.line_num
        for cells in reader:
            start, consumed = consumed + 1, reader.line_num
            if any(cell.strip() for cell in cells):
                fields = dict(zip(header, cells, strict=False))
                yield _make_row(start, fields, default_user)

    return records()


def _jsonl_rows(lines: Iterable[str], default_user: str | None) -> Iterator[_Row]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except ValueError as exc:
            yield _Row(number, problem=f"not valid JSON ({exc})")
            continue
        if not isinstance(fields, dict):
            yield _Row(number, problem="not a JSON object")
            continue
        raw_id = fields.get("conversation_id")
        if raw_id is not None and not isinstance(raw_id, str):
            yield _Row(number, problem="conversation_id must be a string")
            continue
        for key in ("user", "name"):
            value = fields.get(key)
            if value is not None and not isinstance(value, str):
                yield _Row(number, problem=f"{key} must be a string", raw_id=raw_id)
                break
        else:
            yield _make_row(number, fields, default_user)


def _detect_format(path: str, first_line: str) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"


def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: PTH123  (closed by the caller)
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decoded_lines(stream: IO[bytes]) -> Iterator[str]:
    """Decode UTF-8 line by line, so that a bad byte is reported with its line."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise _InputError(
                f"line {number} is not valid UTF-8 (byte {exc.start + 1})"
            ) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def _read_rows(
    stream: IO[bytes], path: str, fmt: str, default_user: str | None
) -> Iterator[_Row]:
    """Sniff the format from the first non-blank line; return the row reader.

    Raises:
        _UsageError: the first lines cannot be read, or a CSV header lacks
            ``conversation_id``.
    """
    lines = _decoded_lines(stream)
    head: list[str] = []
    try:
        for text in lines:
            head.append(text)
            if text.strip():
                break
    except _InputError as exc:
        raise _UsageError(f"cannot read {path}: {exc}") from None
    chosen: Format = (
        _detect_format(path, head[-1] if head else "")
        if fmt == "auto"
        else ("csv" if fmt == "csv" else "jsonl")
    )
    rest = itertools.chain(head, lines)
    if chosen == "csv":
        return _csv_rows(rest, default_user)
    return _jsonl_rows(rest, default_user)


def _count_rows(path: str, fmt: str) -> int | None:
    """Count the data rows of a regular file, for the progress bar."""
    if path == "-":
        return None
    with _open_input(path) as stream:
        rows = _read_rows(stream, path, fmt, "count")
        try:
            return sum(1 for _ in rows)
        except (_InputError, OSError, csv.Error):
            return None  # reported when the run reaches it


# -- the results file ----------------------------------------------------------


def _load_finished(path: Path) -> tuple[set[int], int]:
    """Read the ids already renamed from a results file; drop a torn last line.

    Returns:
        The UUIDs (as ints) of the rows recorded with ``"ok": true``, and how
        many lines could not be read.
    """
    finished: set[int] = set()
    unreadable = 0
    keep = 0
    with path.open("rb") as stream:
        for raw in stream:
            if not raw.endswith(b"\n"):
                break  # a line torn by a killed run: not a finished record
            keep += len(raw)
            try:
                record = json.loads(raw)
            except ValueError:
                unreadable += 1
                continue
            if not isinstance(record, dict) or record.get("ok") is not True:
                continue
            try:
                finished.add(uuid.UUID(str(record.get("id"))).int)
            except ValueError:
                unreadable += 1
    if keep != path.stat().st_size:
        with path.open("r+b") as stream:
            stream.truncate(keep)
    return finished, unreadable


class _Results:
    """The results file: one JSON object a line, flushed as each is written."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self.path = path
        self._stream: IO[str] = path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


# -- progress ------------------------------------------------------------------


class _Progress:
    """Progress on stderr: a tqdm bar, an updating counter, or periodic lines."""

    def __init__(self, total: int | None, *, enabled: bool, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = stream
        self._bar: Any = None
        self._tqdm: Any = None
        self._last = time.monotonic()
        self._last_decile = 0
        self._mode: Literal["bar", "counter", "lines", "off"] = "off"
        if not enabled:
            return
        if _isatty(stream):
            self._mode = "counter"
            with contextlib.suppress(ImportError):
                self._tqdm = importlib.import_module("tqdm")
                self._bar = self._tqdm.tqdm(
                    total=total,
                    desc="renaming",
                    unit=" conv",
                    file=stream,
                    dynamic_ncols=True,
                )
                self._mode = "bar"
        else:
            self._mode = "lines"

    def advance(self, *, failed: bool = False) -> None:
        """Count one finished row."""
        self.done += 1
        if failed:
            self.failed += 1
        if self._mode == "bar":
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(failed=self.failed)
        elif self._mode == "counter":
            now = time.monotonic()
            if now - self._last >= _BAR_REFRESH or self.done == self.total:
                self._last = now
                self._stream.write("\r\x1b[K" + self._status())
                self._stream.flush()
        elif self._mode == "lines":
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        decile = self.done * 10 // self.total if self.total else 0
        if decile > self._last_decile or now - self._last >= _LINE_REPORT_EVERY:
            self._last_decile = decile
            self._last = now
            self._stream.write(f"progress: {self._status()}\n")
            self._stream.flush()

    def _status(self) -> str:
        done = f"{self.done:,}"
        if self.total:
            done += f"/{self.total:,} ({self.done * 100 // self.total}%)"
        return f"{done} done, {self.failed:,} failed"

    def message(self, text: str) -> None:
        """Print a line without garbling the progress display."""
        if self._mode == "bar":
            self._tqdm.tqdm.write(text, file=self._stream)
            return
        if self._mode == "counter":
            self._stream.write("\r\x1b[K" + text + "\n" + self._status())
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Leave the display in its final state."""
        if self._mode == "bar":
            self._bar.close()
        elif self._mode == "counter":
            self._stream.write("\r\x1b[K" + self._status() + "\n")
        elif self._mode == "lines" and self._last_decile < 10:  # noqa: PLR2004
            self._stream.write(f"progress: {self._status()}\n")
        self._stream.flush()
        self._mode = "off"


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class _RetryCounter(logging.Handler):
    """Counts the client's retry log lines, per conversation, and can echo them."""

    def __init__(self, echo: Callable[[str], None] | None) -> None:
        super().__init__(logging.WARNING)
        self.pending: Counter[int] = Counter()
        self.total = 0
        self._echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = _RENAME_URL.search(message) if message.startswith("Retrying") else None
        if match is not None:
            self.pending[uuid.UUID(match[1]).int] += 1
            self.total += 1
        if self._echo is not None:
            self._echo(message)

    def take(self, conversation_id: str) -> int:
        """Return and forget the retries counted for one conversation."""
        return self.pending.pop(uuid.UUID(conversation_id).int, 0)


@contextlib.contextmanager
def _counting_retries(
    echo: Callable[[str], None] | None,
) -> Iterator[_RetryCounter]:
    logger = logging.getLogger("dify_async")
    counter = _RetryCounter(echo)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


# -- the batch engine ----------------------------------------------------------


@attrs.define
class _Summary:
    """What a batch run did, counted as it ran."""

    rows: int = 0
    succeeded: int = 0
    skipped: int = 0
    failures: Counter[str] = attrs.field(factory=Counter)
    retried: int = 0
    retries: int = 0
    requests: int = 0
    elapsed: float = 0.0
    stopped: str | None = None
    interrupted: int | None = None
    input_error: str | None = None

    @property
    def failed(self) -> int:
        """Rows that did not end renamed."""
        return sum(self.failures.values())

    @property
    def all_ok(self) -> bool:
        """Whether the run finished and every row ended renamed."""
        return not (self.failed or self.stopped or self.interrupted or self.input_error)

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON object."""
        return {
            "rows": self.rows,
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": dict(self.failures.most_common()),
            "retried": self.retried,
            "retries": self.retries,
            "requests": self.requests,
            "elapsed": round(self.elapsed, 3),
            "requests_per_second": round(self._rate(), 1),
            "stopped": self.stopped,
            "interrupted": self.interrupted is not None,
            "input_error": self.input_error,
        }

    def _rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def lines(self) -> list[str]:
        """The summary as text."""
        renamed = self.succeeded + self.skipped
        elapsed = f"{self.elapsed:.1f} s"
        out = [f"Summary: {renamed:,} of {self.rows:,} rows renamed in {elapsed}"]
        rows = [
            ("succeeded", self.succeeded, ""),
            *(
                [("already done", self.skipped, "renamed by an earlier run, skipped")]
                if self.skipped
                else []
            ),
            ("failed", self.failed, ""),
            *(
                (f"  {reason}", count, "")
                for reason, count in self.failures.most_common()
            ),
            (
                "retried",
                self.retried,
                f"renames that needed more than one request; {self.retries:,} retries",
            ),
            ("requests sent", self.requests, f"{self._rate():,.0f} requests/s"),
        ]
        width = max(len(f"{count:,}") for _, count, _ in rows)
        label_width = max(len(label) for label, _, _ in rows)
        for label, count, note in rows:
            text = f"  {label:<{label_width}}  {count:>{width},}"
            out.append(f"{text}  ({note})" if note else text)
        if self.stopped:
            out.append(f"Stopped early: {self.stopped}")
        if self.interrupted is not None:
            out.append("Interrupted: rows not reached were not attempted.")
        if self.input_error:
            out.append(f"Input error: {self.input_error}")
        return out


@attrs.define
class _Batch:
    """Runs rows through ``rename_stream`` and records every outcome."""

    client: AsyncDifyClient
    concurrency: int
    progress: _Progress
    retries: _RetryCounter
    results: _Results | None = None
    finished: set[int] = attrs.field(factory=set)
    where: str = "line"
    on_outcome: Callable[[RenameRequest, Conversation | DifyError], None] | None = None
    summary: _Summary = attrs.field(factory=_Summary)
    _pending: dict[int, int] = attrs.field(factory=dict)
    _seen: dict[int, int] = attrs.field(factory=dict)

    async def run(self, rows: Iterable[_Row]) -> _Summary:
        """Rename every row; return the summary (also when interrupted)."""
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
        except _InputError as exc:
            self.summary.input_error = str(exc)
        finally:
            self.summary.elapsed = time.monotonic() - started
            self.progress.close()
        return self.summary

    def _requests(self, rows: Iterable[_Row]) -> Iterator[RenameRequest]:
        iterator = iter(rows)
        while not self.summary.stopped:
            try:
                row = next(iterator)
            except StopIteration:
                return
            except _InputError as exc:
                raise _InputError(f"cannot read the input: {exc}") from None
            except (OSError, csv.Error) as exc:
                where = f" after {self.where} {self._last_line}" if self._seen else ""
                raise _InputError(f"cannot read the input{where}: {exc}") from exc
            self.summary.rows += 1
            request = self._admit(row)
            if request is not None:
                yield request

    @property
    def _last_line(self) -> int:
        return max(self._seen.values(), default=0)

    def _admit(self, row: _Row) -> RenameRequest | None:
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
        self._pending[key] = row.line
        return row.request

    def _refuse(self, row: _Row, problem: str) -> None:
        self.summary.failures["bad row"] += 1
        self.progress.message(f"{self.where} {row.line}: bad row: {problem}")
        self.progress.advance(failed=True)
        if self.results is not None:
            self.results.write(
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

    def _record(
        self, request: RenameRequest, outcome: Conversation | DifyError
    ) -> None:
        cid = request.conversation_id
        line = self._pending.pop(uuid.UUID(cid).int)
        retries = self.retries.take(cid)
        attempts = outcome.attempts if isinstance(outcome, DifyError) else 1 + retries
        self.summary.requests += attempts
        if attempts > 1:
            self.summary.retried += 1
            self.summary.retries += attempts - 1
        record: dict[str, Any] = {"line": line, "id": cid}
        if isinstance(outcome, Conversation):
            self.summary.succeeded += 1
            record.update(ok=True, name=outcome.name, attempts=attempts)
            self.progress.advance()
        else:
            self.summary.failures[_reason(outcome)] += 1
            record.update(ok=False, **_error_record(outcome), attempts=attempts)
            self.progress.message(f"{self.where} {line}: {cid}: {_describe(outcome)}")
            self.progress.advance(failed=True)
            if isinstance(outcome, AuthenticationError | PermissionDeniedError):
                # Every other row would fail the same way: start no new ones.
                self.summary.stopped = (
                    f"the server refused the app ({_reason(outcome)}); "
                    "rows not reached were not attempted"
                )
        if self.results is not None:
            self.results.write(record)
        if self.on_outcome is not None:
            self.on_outcome(request, outcome)


@contextlib.contextmanager
def _signals_cancel(summary: _Summary) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a clean cancellation of the current task."""
    loop = asyncio.get_running_loop()
    task = cast("asyncio.Task[object]", asyncio.current_task())
    installed: list[signal.Signals] = []

    def interrupt(signum: signal.Signals) -> None:
        if summary.interrupted is None:  # a second signal changes nothing
            summary.interrupted = int(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, interrupt, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            continue  # not the main thread, or a platform without them
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _exit_status(summary: _Summary) -> int:
    if summary.interrupted is not None:
        return 128 + summary.interrupted
    return EXIT_OK if summary.all_ok else EXIT_FAILED


# -- batch ---------------------------------------------------------------------


def _batch_command(args: argparse.Namespace) -> int:
    if args.resume and args.output is None:
        raise _UsageError("--resume needs --output (the results file to resume)")
    finished: set[int] = set()
    if args.output is not None and args.output.exists():
        if args.resume:
            finished, unreadable = _load_finished(args.output)
            if unreadable:
                _warn(
                    f"warning: {unreadable} line(s) of {args.output} could not be "
                    "read; their rows will be renamed again"
                )
        elif args.output.stat().st_size > 0:
            raise _UsageError(
                f"{args.output} already holds results: pass --resume to continue "
                "that run, or choose another --output"
            )
    _make_client(args)  # a missing or bad key is a usage error, found up front
    total = None if args.no_progress else _count_rows(args.file, args.format)
    with _open_input(args.file) as stream:
        rows = _read_rows(stream, args.file, args.format, args.user)
        return asyncio.run(_batch(args, rows, finished, total))


async def _batch(
    args: argparse.Namespace,
    rows: Iterator[_Row],
    finished: set[int],
    total: int | None,
) -> int:
    progress = _Progress(total, enabled=not args.no_progress, stream=sys.stderr)
    results = None if args.output is None else _Results(args.output, append=args.resume)
    echo = progress.message if args.verbose else None
    try:
        with _counting_retries(echo) as retries:
            client = _make_client(
                args, max_rate=args.rate, connections=args.concurrency
            )
            async with client:
                batch = _Batch(
                    client,
                    args.concurrency,
                    progress,
                    retries,
                    results=results,
                    finished=finished,
                )
                with _signals_cancel(batch.summary):
                    summary = await batch.run(rows)
    finally:
        progress.close()
        if results is not None:
            results.close()
    if args.json:
        _say(json.dumps(summary.as_json()))
    else:
        _say("\n".join(summary.lines()))
    return _exit_status(summary)


# -- demo ----------------------------------------------------------------------

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
_DEMO_USERS: Final = 20
_MIN_DEMO_COUNT: Final = 10
_AUTO_INDEX: Final = 1
_WRONG_USER_INDEX: Final = 2


_FaultPlan = tuple[str, float, tuple["Fault", ...]]
"""A kind of fault: its label, the share of renames it strikes, its faults."""


def _fault_plans() -> list[_FaultPlan]:
    from .testing import Fault  # noqa: PLC0415  (the demo alone needs it)

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
    """The demo's fake server, its requests, and what it injected."""

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
            cid = self.server.add_conversation(user=owner, messages=[first])
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

    def check(self, summary: _Summary) -> tuple[int, list[str]]:
        """Compare the run with the server's records.

        Returns:
            How many explicit renames are stored as requested, and every
            discrepancy found.
        """
        problems = []
        if len(self.outcomes) != len(self.requests):
            missing = len(self.requests) - len(self.outcomes)
            problems.append(f"{missing} renames have no outcome")
        as_requested = 0
        for index, request in enumerate(self.requests):
            problem = self._check_one(index, request)
            if problem:
                problems.append(problem)
            elif index not in (_AUTO_INDEX, _WRONG_USER_INDEX):
                as_requested += 1
        server = self.server
        expected = len(self.requests) + self.injected
        if server.requests_received != expected:
            problems.append(
                f"the server received {server.requests_received:,} requests, "
                f"expected {expected:,}"
            )
        if summary.requests != server.requests_received:
            problems.append(
                f"the client counted {summary.requests:,} requests, the server "
                f"{server.requests_received:,}"
            )
        if server.llm_calls != 1:
            problems.append(f"{server.llm_calls} LLM calls instead of 1")
        if summary.failures != Counter({"404 not_found": 1}):
            problems.append(f"failures: {dict(summary.failures)}")
        return as_requested, problems

    def _check_one(self, index: int, request: RenameRequest) -> str | None:
        stored = self.server.get_conversation(request.conversation_id)
        outcome = self.outcomes.get(request.conversation_id)
        if index == _AUTO_INDEX:
            if stored.name == _AUTO_QUESTION and isinstance(outcome, Conversation):
                return None
            return f"auto_generate stored {stored.name!r}"
        if index == _WRONG_USER_INDEX:
            if stored.rename_count == 0 and isinstance(outcome, NotFoundError):
                return None
            return "the rename as the wrong user did not end in a 404"
        if stored.name == request.name and isinstance(outcome, Conversation):
            return None
        return f"{request.conversation_id} is named {stored.name!r}"


def _demo_command(args: argparse.Namespace) -> int:
    if args.count < _MIN_DEMO_COUNT:
        raise _UsageError(f"--count must be at least {_MIN_DEMO_COUNT}")
    from .testing import FakeDifyServer  # noqa: PLC0415  (the demo alone needs it)

    with FakeDifyServer() as server:
        demo = _Demo(server)
        demo.seed(args.count)
        demo.inject(random.Random(args.seed))  # noqa: S311  (placement, not secrets)
        return asyncio.run(_demo(args, demo))


async def _demo(args: argparse.Namespace, demo: _Demo) -> int:
    server = demo.server
    _say(
        f"dify-async demo: renaming {len(demo.requests):,} conversations on an "
        "embedded fake Dify server"
    )
    _say(f"  server       {server.base_url}  (fake Dify {server.version})")
    _say(f"  concurrency  {args.concurrency}")
    if args.rate:
        _say(f"  max rate     {args.rate:g} requests/s")
    _say(f"  faults       {demo.injected:,} injected, each strikes one request:")
    for text in demo.fault_lines:
        _say(f"              {text}")
    _say(
        "  also         one auto_generate rename (an LLM call on the server)\n"
        "               one rename sent as the wrong user (a 404)"
    )
    _say()
    sys.stdout.flush()

    progress = _Progress(
        len(demo.requests), enabled=not args.no_progress, stream=sys.stderr
    )
    echo = progress.message if args.verbose else None
    with _counting_retries(echo) as retries:
        async with AsyncDifyClient(
            server.api_key,
            base_url=server.base_url,
            max_rate=args.rate,
            connection_limit=args.concurrency,
        ) as client:
            batch = _Batch(
                client,
                args.concurrency,
                progress,
                retries,
                where="request",
                on_outcome=demo.keep,
            )
            rows = (
                _Row(n, request=request, raw_id=request.conversation_id)
                for n, request in enumerate(demo.requests, start=1)
            )
            with _signals_cancel(batch.summary):
                summary = await batch.run(rows)

    _say()
    auto = demo.requests[_AUTO_INDEX]
    generated = demo.outcomes.get(auto.conversation_id)
    if isinstance(generated, Conversation):
        _say(
            f"auto_generate   {auto.conversation_id}  titled by the server's LLM: "
            f"{_quoted(generated.name)}"
        )
    wrong = demo.requests[_WRONG_USER_INDEX]
    refused = demo.outcomes.get(wrong.conversation_id)
    if isinstance(refused, DifyError):
        _say(
            f"expected error  {wrong.conversation_id}  {_describe(refused)}  "
            f"(sent as {wrong.user}; it belongs to {demo.owners[_WRONG_USER_INDEX]}; "
            "not retried)"
        )
    _say()
    _say("\n".join(summary.lines()))
    _say()
    if summary.interrupted is not None:
        return _exit_status(summary)
    as_requested, problems = demo.check(summary)
    explicit = len(demo.requests) - 2
    received, stored = server.requests_received, server.renames_applied
    width = len(f"{max(received, stored):,}")
    _say("Server check (the fake server's own records):")
    _say(
        f"  requests received  {received:>{width},}  = {len(demo.requests):,} "
        f"renames + {received - len(demo.requests):,} retries"
    )
    _say(
        f"  renames stored     {stored:>{width},}  = {summary.succeeded:,} "
        f"successes + {stored - summary.succeeded:,} stored again by a retry "
        "whose first answer was lost"
    )
    _say(f"  LLM calls          {server.llm_calls:>{width},}")
    _say(
        f"  names              {as_requested:>{width},}  of {explicit:,} explicit "
        "renames stored exactly as requested"
    )
    if problems:
        for problem in problems[:20]:
            _say(f"  UNEXPECTED: {problem}")
        return EXIT_FAILED
    _say()
    _say(
        "Everything behaved as expected: every transient fault was retried to "
        "success, and the 404 was reported once and not retried."
    )
    return EXIT_OK
