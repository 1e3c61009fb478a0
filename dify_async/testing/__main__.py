"""Serve a fake Dify on its own: ``python -m dify_async.testing``.

It starts a :class:`~dify_async.testing.FakeDifyServer`, seeds conversations,
prints how to reach them, and serves until it is interrupted (Ctrl+C or
SIGTERM), so that the command line, a manual ``curl`` or a program in another
language can be tried against a Dify that needs no account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._server import FakeDifyServer

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["main"]

_DESCRIPTION: Final = """\
Serve a fake Dify Service API (POST /v1/conversations/{id}/name) until
interrupted. It answers like a real Dify server: same checks, statuses, error
codes and headers.

Once listening, it prints the base URL, the key of its chat app, the seeded
conversation ids and shell 'export' lines for DIFY_BASE_URL and DIFY_API_KEY.
The key is new on every run. With --state-file it also writes the same as JSON
({"base_url", "api_key", "user", "conversation_ids"}), atomically and only
once the server listens: wait for the file, then read it. The file is removed
when the server stops.

Ctrl+C (SIGINT) or SIGTERM stops it cleanly, with exit status 0.
"""

_EPILOG: Final = """\
example:
  python -m dify_async.testing --message "Plan three days in Lisbon"
  # then, in another shell, with the two export lines it printed:
  python -m dify_async rename ID --user user-42 --name "Trip plans"
"""


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dify_async.testing",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        help="TCP port; 0 picks a free one, which is printed (default: %(default)s)",
    )
    parser.add_argument(
        "--conversations",
        metavar="N",
        type=_count,
        default=3,
        help="how many conversations to seed (default: %(default)s)",
    )
    parser.add_argument(
        "--user",
        default="user-42",
        help="the end user who owns them; requests must name the same user "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--message",
        dest="messages",
        metavar="TEXT",
        action="append",
        default=[],
        help="a message of each seeded conversation, oldest first; repeat for "
        "more. auto_generate titles a conversation from its first message and "
        "refuses one without any (default: no messages)",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        help="write base_url, api_key, user and conversation_ids there as JSON "
        "once listening",
    )
    return parser


def _say(*lines: str) -> None:
    # Flushed at once: a script reading the pipe must not wait for a buffer.
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _announce(server: FakeDifyServer, user: str, ids: list[str]) -> None:
    _say(
        f"Fake Dify {server.version} listening on {server.base_url}",
        f"  base URL       {server.base_url}",
        f"  API key        {server.api_key}  (chat app)",
        f"  user           {user}",
        f"  conversations  {len(ids)}",
        *(f"    {cid}" for cid in ids),
        "For a shell:",
        f"export DIFY_BASE_URL={shlex.quote(server.base_url)}",
        f"export DIFY_API_KEY={shlex.quote(server.api_key)}",
        "Press Ctrl+C to stop.",
    )


@contextlib.contextmanager
def _published(path: Path | None, state: dict[str, object]) -> Iterator[None]:
    """Keep *state* in the JSON file *path* (if any) for the duration."""
    if path is None:
        yield
        return
    # Write a temporary file next to the target, then rename it: a reader never
    # sees a half-written file.
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(state, stream, indent=2)
            stream.write("\n")
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        yield
    finally:
        # Gone before the server stops: the file never names a dead server.
        path.unlink(missing_ok=True)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows: Ctrl+C then raises KeyboardInterrupt, caught in main.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with FakeDifyServer(host=args.host, port=args.port) as server:
        ids = [
            server.add_conversation(user=args.user, messages=args.messages)
            for _ in range(args.conversations)
        ]
        _announce(server, args.user, ids)
        state: dict[str, object] = {
            "base_url": server.base_url,
            "api_key": server.api_key,
            "user": args.user,
            "conversation_ids": ids,
        }
        with _published(args.state_file, state):
            await stop.wait()
    _say("Stopped.")


def main(argv: list[str] | None = None) -> int:
    """Run the standalone fake Dify server.

    Args:
        argv: The command-line arguments, without the program name; those of
            the process when ``None``.

    Returns:
        The exit status: 0 after a clean stop, 1 when the address cannot be
        bound or the state file cannot be written.
    """
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # pragma: no cover  (Windows, or before the loop runs)
        pass
    except OSError as exc:
        sys.stderr.write(f"python -m dify_async.testing: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
