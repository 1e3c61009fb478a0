"""The results file: one JSON line per finished row, and resuming from it.

A run that did not rename every row prints the command that resumes it.

The file is checked and opened before anything is sent: a missing folder, a
directory, no permission, a file that holds earlier results (without
``--resume``) or a file that another program wrote are each a usage error,
and the file is left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from ._messages import UsageError, os_reason

__all__ = ["Results", "resume_command"]

# Every record this command writes starts so; a torn first line is ours if
# it does.
_RECORD_START: Final = b'{"line": '
# How much of a file to read to tell whether it holds results.
_SNIFF_LINES: Final = 100


def _is_record(raw: bytes) -> bool:
    try:
        record = json.loads(raw)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("ok"), bool)


def _finished_id(raw: bytes) -> int | None:
    """The UUID (as an int) of a success record; -1 for an unreadable line."""
    try:
        record = json.loads(raw)
    except ValueError:
        return -1
    if not isinstance(record, dict) or record.get("ok") is not True:
        return None
    try:
        return uuid.UUID(str(record.get("id"))).int
    except ValueError:
        return -1


def _holds_results(stream: IO[bytes]) -> bool:
    """Whether the file is one this command wrote (its first lines tell)."""
    whole = False
    for number, raw in enumerate(stream):
        if not raw.endswith(b"\n"):
            return not whole and raw.startswith(_RECORD_START)
        whole = True
        if _is_record(raw):
            return True
        if number >= _SNIFF_LINES:
            break
    return False


class Results:
    """The results file, opened for the run; one JSON object a line.

    Build it with :meth:`open`. Each :meth:`write` is flushed at once, so a
    killed run loses no finished row.

    Attributes:
        path: Where the file is.
        finished: The ids (UUIDs as ints) recorded as renamed by an earlier
            run, when resuming.
        unreadable: How many lines of the earlier run could not be read.
    """

    def __init__(self, path: Path, stream: IO[str]) -> None:
        self.path = path
        self.finished: set[int] = set()
        self.unreadable = 0
        self._stream = stream

    @classmethod
    def open(cls, path: Path, *, resume: bool) -> Results:
        """Check the results file and open it for the run.

        Without *resume* the file must not exist or be empty; with it, a file
        this command wrote is read (its torn last line, if a kill left one,
        is cut off) and appended to.

        Args:
            path: The ``--output`` file.
            resume: Whether ``--resume`` was given.

        Returns:
            The open file.

        Raises:
            UsageError: The file cannot be used; it is left untouched.
        """
        if path.is_dir():
            raise UsageError(
                f"--output {path} is a directory: give a file name, such as "
                f"{path / 'results.jsonl'}"
            )
        try:
            if resume and path.exists():
                return cls._resumed(path)
            if path.is_file() and path.stat().st_size > 0:
                cls._refuse_overwrite(path)
            stream = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise UsageError(cls._cannot(path, exc)) from None
        return cls(path, stream)

    @staticmethod
    def _cannot(path: Path, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError) and not path.parent.is_dir():
            return f"cannot write {path}: the folder {path.parent} does not exist"
        return f"cannot write {path}: {os_reason(exc)}"

    @staticmethod
    def _refuse_overwrite(path: Path) -> None:
        with path.open("rb") as stream:
            ours = _holds_results(stream)
        if ours:
            raise UsageError(
                f"{path} already holds results: pass --resume to continue that "
                "run, or choose another --output"
            )
        raise UsageError(
            f"{path} is not empty and holds no dify-async results: choose "
            "another --output"
        )

    @classmethod
    def _resumed(cls, path: Path) -> Results:
        if not path.is_file():
            raise UsageError(f"cannot resume from {path}: it is not a regular file")
        with path.open("r+b") as stream:
            if os.fstat(stream.fileno()).st_size and not _holds_results(stream):
                raise UsageError(
                    f"cannot resume from {path}: it holds no dify-async results "
                    "(--resume continues a file that --output wrote)"
                )
            stream.seek(0)
            finished, unreadable, keep = set(), 0, 0
            for raw in stream:
                if not raw.endswith(b"\n"):
                    break  # a line torn by a killed run: not a finished record
                keep += len(raw)
                found = _finished_id(raw)
                if found == -1:
                    unreadable += 1
                elif found is not None:
                    finished.add(found)
            stream.truncate(keep)
        results = cls(path, path.open("a", encoding="utf-8"))
        results.finished = finished
        results.unreadable = unreadable
        return results

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it.

        Args:
            record: The row's outcome.

        Raises:
            OSError: The file cannot be written (a full disk, say).
        """
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Close the file; a write that cannot be flushed any more is dropped."""
        with contextlib.suppress(OSError):
            self._stream.close()


def _without_key(argv: Sequence[str], key: str | None) -> list[str]:
    """*argv* without ``--api-key KEY`` (in any spelling argparse accepts)."""
    kept: list[str] = []
    for word in argv:
        if key and word == key and kept and kept[-1].startswith("--"):
            kept.pop()  # the option whose value it is
        elif not (key and word.startswith("--") and word.endswith("=" + key)):
            kept.append(word)
    return kept


def resume_command(args: argparse.Namespace) -> str | None:
    """The command that resumes this run: its own, with ``--resume``.

    The API key is left out when it was on the command line, so that it is
    never printed.

    Args:
        args: The parsed command line, with ``prog`` and ``argv``.

    Returns:
        The command, shell-quoted; ``None`` without a results file.
    """
    if args.output is None:
        return None
    words = [*shlex.split(args.prog), *_without_key(args.argv, args.api_key)]
    if not args.resume:
        words.append("--resume")
    return shlex.join(words)
