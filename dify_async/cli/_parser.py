"""The command line's grammar: commands, options, option types, exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from dify_async import __version__

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

EXIT_OK: Final = 0
"""Every rename succeeded."""
EXIT_FAILED: Final = 1
"""A rename failed, a row was refused, or the run could not go on."""
EXIT_USAGE: Final = 2
"""A usage, input or environment problem found before anything was sent."""


def build_parser(prog: str | None) -> argparse.ArgumentParser:
    """Build the parser of the whole command line.

    Each command's parser sets ``command`` (``"rename"``, ``"batch"`` or
    ``"demo"``) in the parsed namespace.

    Args:
        prog: The program name shown in help and errors (default:
            ``dify-async``).

    Returns:
        The parser.
    """
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

    common = argparse.ArgumentParser(add_help=False)
    # Show the traceback of an input or environment problem instead of one line.
    common.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    connection = argparse.ArgumentParser(add_help=False, parents=[common])
    _add_connection_options(connection)

    _rename_options(
        commands.add_parser(
            "rename",
            parents=[connection],
            help="rename one conversation",
            description="Rename one conversation and print it.",
        )
    )
    _batch_options(
        commands.add_parser(
            "batch",
            parents=[connection],
            help="rename every row of a CSV or JSON Lines file",
            description=(
                "Rename every row of FILE: CSV with a header row, or JSON Lines, "
                "with the columns or keys conversation_id, user, name, "
                "auto_generate. A row needs a name unless auto_generate is true. "
                "Bad rows are reported with their line number and skipped."
            ),
        )
    )
    _demo_options(
        commands.add_parser(
            "demo",
            parents=[common],
            help="rename thousands of conversations on an embedded fake Dify server",
            description=(
                "Start an embedded fake Dify server, seed it with conversations, "
                "plant transient faults (gateway 502/503/504, 429 with "
                "Retry-After, dropped connections), rename them all in one batch, "
                "and check the result against the server's records."
            ),
        )
    )
    return parser


def _add_connection_options(connection: argparse.ArgumentParser) -> None:
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
        type=positive_float,
        metavar="SECONDS",
        help="per attempt (default: 60)",
    )
    group.add_argument(
        "--max-retries",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="retries of a transient failure (default: 2)",
    )


def _rename_options(rename: argparse.ArgumentParser) -> None:
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
    rename.set_defaults(command="rename")


def _batch_options(batch: argparse.ArgumentParser) -> None:
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
        type=positive_int,
        default=16,
        metavar="N",
        help="renames in flight at once (default: 16)",
    )
    batch.add_argument(
        "--rate",
        type=positive_float,
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
    batch.set_defaults(command="batch")


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--count",
        type=positive_int,
        default=2000,
        metavar="N",
        help="conversations to rename (default: 2000, at least 10)",
    )
    demo.add_argument(
        "--concurrency",
        type=positive_int,
        default=32,
        metavar="N",
        help="renames in flight at once (default: 32)",
    )
    demo.add_argument(
        "--rate", type=positive_float, metavar="PER_SECOND", help="pace requests"
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
    demo.set_defaults(command="demo")


def _int_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        rule = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer of at least 1.

    Args:
        text: The option's value.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer, or is below 1.
    """
    return _int_at_least(1, text)


def non_negative_int(text: str) -> int:
    """Parse an integer of at least 0.

    Args:
        text: The option's value.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer, or is negative.
    """
    return _int_at_least(0, text)


def positive_float(text: str) -> float:
    """Parse a finite number above 0.

    Args:
        text: The option's value.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: it is not a number, or not above 0, or
            infinite.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
