"""The batch's input: CSV or JSON Lines, decoded and parsed as it is read.

The file is opened and its first row read before anything is sent, so that a
missing, unreadable or empty file, a file that is not UTF-8 from its first
line, or a CSV header without ``conversation_id`` is a usage error. The rest is
read as the batch goes, so the file's size does not matter; a problem found
there ends the input with :class:`InputError`.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Final, Literal

import attrs

from dify_async import InvalidRequestError, RenameRequest

from ._messages import UsageError, os_reason

__all__ = [
    "InputError",
    "Row",
    "count_rows",
    "open_input",
    "parse_flag",
    "read_rows",
]

_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"", "0", "false", "f", "no", "n", "off"})
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")

Format = Literal["csv", "jsonl"]


class InputError(Exception):
    """The input could not be read on: it is not UTF-8, or not CSV, or I/O."""


@attrs.frozen
class Row:
    """One input row: a request, or the reason it cannot become one.

    Attributes:
        line: Where the row starts in the input, from 1.
        request: The rename, when the row is good.
        problem: Why the row is bad, when it is.
        raw_id: The row's conversation id as written, when it has one.
    """

    line: int
    request: RenameRequest | None = None
    problem: str | None = None
    raw_id: str | None = None


def parse_flag(value: object) -> bool | None:
    """Read an ``auto_generate`` cell.

    Args:
        value: The cell: a JSON value, or CSV text.

    Returns:
        The flag (missing and empty are false), or ``None`` when *value* is
        not a spelling of true or false.
    """
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


def _make_row(line: int, fields: Mapping[str, object], default_user: str | None) -> Row:
    raw_id = fields.get("conversation_id")
    shown_id = raw_id.strip() if isinstance(raw_id, str) else None
    if not shown_id:
        return Row(line, problem="no conversation_id")
    value = fields.get("auto_generate")
    auto_generate = parse_flag(value)
    if auto_generate is None:
        return Row(
            line,
            problem=f"auto_generate must be true or false, got {value!r}",
            raw_id=shown_id,
        )
    user = fields.get("user") or default_user
    if not isinstance(user, str):
        return Row(
            line, problem="no user (add a user column or pass --user)", raw_id=shown_id
        )
    name = fields.get("name") or None
    if name is None and not auto_generate:
        return Row(
            line, problem="no name and auto_generate is not true", raw_id=shown_id
        )
    try:
        request = RenameRequest(
            shown_id, user, name if isinstance(name, str) else None, auto_generate
        )
    except InvalidRequestError as exc:
        return Row(line, problem=exc.message, raw_id=shown_id)
    return Row(line, request=request, raw_id=shown_id)


def _csv_rows(
    lines: Iterable[str], default_user: str | None, shown: str
) -> Iterator[Row]:
    """Read the header at once (a bad one is a usage error), then the rows."""
    reader = csv.reader(lines)
    header: list[str] = []
    for cells in reader:
        if any(cell.strip() for cell in cells):
            header = [cell.strip().lower() for cell in cells]
            break
    if header and "conversation_id" not in header:
        raise UsageError(
            f"{shown}, line {reader.line_num}: the CSV header has no "
            f"conversation_id column (found: {', '.join(header)})"
        )

    def records() -> Iterator[Row]:
        consumed = reader.line_num
        for cells in reader:
            start, consumed = consumed + 1, reader.line_num
            if any(cell.strip() for cell in cells):
                fields = dict(zip(header, cells, strict=False))
                yield _make_row(start, fields, default_user)

    return records()


def _jsonl_rows(lines: Iterable[str], default_user: str | None) -> Iterator[Row]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except ValueError as exc:
            yield Row(number, problem=f"not valid JSON ({exc})")
            continue
        if not isinstance(fields, dict):
            yield Row(number, problem="not a JSON object")
            continue
        raw_id = fields.get("conversation_id")
        if raw_id is not None and not isinstance(raw_id, str):
            yield Row(number, problem="conversation_id must be a string")
            continue
        for key in ("user", "name"):
            value = fields.get(key)
            if value is not None and not isinstance(value, str):
                yield Row(number, problem=f"{key} must be a string", raw_id=raw_id)
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


def _shown(path: str) -> str:
    return "standard input" if path == "-" else path


def open_input(path: str) -> IO[bytes]:
    """Open the input for reading, or say in one line why it cannot be.

    Args:
        path: The file, or ``-`` for standard input.

    Returns:
        The byte stream; the caller closes it.

    Raises:
        UsageError: The file is missing, unreadable, or a directory.
    """
    if path == "-":
        return sys.stdin.buffer
    if Path(path).is_dir():
        raise UsageError(f"cannot read {path}: it is a directory, not a file")
    try:
        return open(path, "rb")  # noqa: PTH123  (closed by the caller)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {os_reason(exc)}") from None


def _decoded_lines(stream: IO[bytes]) -> Iterator[str]:
    """Decode UTF-8 line by line, so that a bad byte is reported with its line."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            where = (
                f"line {number}, byte {exc.start + 1} of the line "
                f"(0x{raw[exc.start]:02X})"
            )
            kind = (
                "it looks like UTF-16"
                if number == 1 and raw.startswith(_UTF16_BOMS)
                else f"not UTF-8 at {where}"
            )
            raise InputError(f"{kind}; save the file as UTF-8") from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def read_rows(
    stream: IO[bytes], path: str, fmt: str, default_user: str | None
) -> Iterator[Row]:
    """Read up to the first row, then return every row as it is read.

    The format is sniffed from the first non-blank line unless *fmt* says it.

    Args:
        stream: The input.
        path: Its name (``-`` for standard input), for the extension and
            messages.
        fmt: ``"auto"``, ``"csv"`` or ``"jsonl"``.
        default_user: The user of rows without one.

    Returns:
        The rows, the first one included. Reading them may raise
        :class:`InputError`, :class:`OSError` or :class:`csv.Error`.

    Raises:
        UsageError: The input has no rows, its first lines cannot be read, or
            its CSV header lacks ``conversation_id``.
    """
    shown = _shown(path)
    lines = _decoded_lines(stream)
    try:
        head: list[str] = []
        for text in lines:
            head.append(text)
            if text.strip():
                break
        chosen: Format = (
            _detect_format(path, head[-1] if head else "")
            if fmt == "auto"
            else ("csv" if fmt == "csv" else "jsonl")
        )
        rest = itertools.chain(head, lines)
        rows = (
            _csv_rows(rest, default_user, shown)
            if chosen == "csv"
            else _jsonl_rows(rest, default_user)
        )
        first = next(rows, None)
    except (InputError, csv.Error) as exc:
        raise UsageError(f"cannot read {shown}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {os_reason(exc)}") from None
    if first is None:
        raise UsageError(f"no rows in {shown}: nothing to rename")
    return itertools.chain((first,), rows)


def count_rows(path: str, fmt: str) -> int | None:
    """Count the rows of a regular file, for the progress and the summary.

    Args:
        path: The input, as given.
        fmt: ``"auto"``, ``"csv"`` or ``"jsonl"``.

    Returns:
        How many rows the batch will read, good and bad; ``None`` for standard
        input, a pipe, or a file that cannot be read to the end.
    """
    if path == "-" or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as stream:  # noqa: PTH123
            return sum(1 for _ in read_rows(stream, path, fmt, "count"))
    except (UsageError, InputError, OSError, csv.Error):
        return None  # reported when the run reaches it
