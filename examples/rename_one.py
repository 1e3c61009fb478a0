"""Rename one Dify conversation from the command line.

Give a new name, or ``--auto`` to let Dify title the conversation from its
first message::

    export DIFY_API_KEY=app-...
    python examples/rename_one.py 45701982-8118-4bc5-8e9b-64562b4555f2 \
        "Trip plans" --user user-42
    python examples/rename_one.py 45701982-8118-4bc5-8e9b-64562b4555f2 \
        --auto --user user-42

Set ``DIFY_BASE_URL`` (for example ``https://dify.example.com/v1``) to talk to
a self-hosted Dify instead of Dify Cloud.

No Dify at hand? ``--fake`` starts a fake Dify server inside the program,
holding the conversation to rename, and renames it there::

    python examples/rename_one.py --fake
    python examples/rename_one.py --fake --auto

The exit status is 0 when the conversation was renamed, 1 when Dify (or the
network) said no, and 2 for a usage error: a missing argument or key, or an
argument Dify would refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import NoReturn

from dify_async import (
    AsyncDifyClient,
    Conversation,
    DifyError,
    InvalidRequestError,
    RenameRequest,
)
from dify_async.testing import FakeDifyServer

SAMPLE_CONVERSATION = "45701982-8118-4bc5-8e9b-64562b4555f2"
SAMPLE_USER = "user-42"


class Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: message`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


async def rename(request: RenameRequest) -> Conversation:
    """Rename one conversation; the key and URL come from the environment."""
    async with AsyncDifyClient() as client:
        return await client.rename_conversation(
            request.conversation_id,
            user=request.user,
            name=request.name,
            auto_generate=request.auto_generate,
        )


async def rename_on_a_fake_server(request: RenameRequest) -> Conversation:
    """Rename one conversation held by a fake Dify server started for it."""
    async with FakeDifyServer() as server:
        server.add_conversation(
            user=request.user,
            conversation_id=request.conversation_id,
            messages=["Can you plan three days in Lisbon for me?"],
        )
        print(f"(a fake Dify server at {server.base_url})", file=sys.stderr)
        async with AsyncDifyClient(server.api_key, base_url=server.base_url) as client:
            return await client.rename_conversation(
                request.conversation_id,
                user=request.user,
                name=request.name,
                auto_generate=request.auto_generate,
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, rename, and return the exit status."""
    parser = Parser(description="Rename one Dify conversation.")
    parser.add_argument("conversation_id", nargs="?", help="the conversation's UUID")
    parser.add_argument("name", nargs="?", help="the new name")
    parser.add_argument("--user", help="the end user the conversation belongs to")
    parser.add_argument(
        "--auto", action="store_true", help="let Dify generate the name"
    )
    parser.add_argument(
        "--fake",
        action="store_true",
        help="rename on a fake Dify server started by this program",
    )
    args = parser.parse_args(argv)
    if args.fake:
        # Everything has a default: the fake server is seeded to match.
        args.conversation_id = args.conversation_id or SAMPLE_CONVERSATION
        args.user = args.user or SAMPLE_USER
        if args.name is None and not args.auto:
            args.name = "Trip plans"
    elif not os.environ.get("DIFY_API_KEY"):
        parser.error("set DIFY_API_KEY or pass --fake")
    elif args.conversation_id is None:
        parser.error("give the CONVERSATION_ID to rename")
    elif args.user is None:
        parser.error("give the --user the conversation belongs to")
    if (args.name is None) != args.auto:
        parser.error("give either a NAME or --auto")

    try:
        # Checked here, before anything is sent (or a fake server started).
        request = RenameRequest(
            args.conversation_id, args.user, args.name, auto_generate=args.auto
        )
        run = rename_on_a_fake_server if args.fake else rename
        conversation = asyncio.run(run(request))
    except InvalidRequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DifyError as error:
        # The message names the problem; it never contains the API key.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{conversation.id} is now named {conversation.name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
