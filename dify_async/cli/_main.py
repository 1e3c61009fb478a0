"""The entry point: parse, dispatch, and turn problems into one line each."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Final

from ._messages import UsageError, os_reason, warn
from ._parser import EXIT_FAILED, EXIT_USAGE, build_parser
from ._rename import rename_command
from ._runner import batch_command

__all__ = ["main"]

_SIGPIPE: Final = int(getattr(signal, "SIGPIPE", 13))


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line and return its exit status.

    A usage, input or environment problem is one line on standard error,
    never a traceback (the hidden ``--debug`` option shows one).

    Args:
        argv: The arguments, without the program name (default:
            ``sys.argv[1:]``).
        prog: The program name shown in help, errors and the command that
            resumes a batch (default: ``dify-async``).

    Returns:
        0 when everything succeeded, 1 when a rename failed, 2 for a usage
        error, 128 + N when interrupted by signal N.
    """
    parser = build_parser(prog)
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.prog = parser.prog
    args.argv = words
    _tolerate_unencodable_output()
    try:
        with _library_log_silenced():
            status = _dispatch(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not at exit
    except UsageError as exc:
        if args.debug:
            raise
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        warn(f"{parser.prog}: interrupted")
        return 128 + int(signal.SIGINT)
    except BrokenPipeError:
        # Whoever read standard output went away (a pipe into head): stop
        # quietly, as a program killed by SIGPIPE would.
        _discard_stdout()
        return 128 + _SIGPIPE
    except OSError as exc:
        if args.debug:
            raise
        _discard_stdout()  # what could not be written would fail again at exit
        where = f": {exc.filename}" if exc.filename else ""
        warn(f"{parser.prog}: error: {os_reason(exc)}{where}")
        return EXIT_FAILED
    return status


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "rename":
        return rename_command(args)
    if args.command == "batch":
        return batch_command(args)
    from ._demo import demo_command  # noqa: PLC0415  (loads the fake server)

    return demo_command(args)


@contextlib.contextmanager
def _library_log_silenced() -> Iterator[None]:
    """Keep the library's log lines (its retries) off standard error.

    The command line says what happens in its own words: retries are counted
    through ``on_retry``, and shown with ``--verbose``.
    """
    logger = logging.getLogger("dify_async")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _tolerate_unencodable_output() -> None:
    """Escape what the terminal's encoding cannot show instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _discard_stdout() -> None:
    """Point standard output at the null device, so exiting does not fail."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
