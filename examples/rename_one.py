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
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dify_async import AsyncDifyClient, Conversation, DifyError


async def rename(
    conversation_id: str,
    *,
    user: str,
    name: str | None = None,
    auto_generate: bool = False,
) -> Conversation:
    """Rename one conversation; the key and URL come from the environment."""
    async with AsyncDifyClient() as client:
        return await client.rename_conversation(
            conversation_id, user=user, name=name, auto_generate=auto_generate
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, rename, and return the exit status."""
    parser = argparse.ArgumentParser(description="Rename one Dify conversation.")
    parser.add_argument("conversation_id", help="the conversation's UUID")
    parser.add_argument("name", nargs="?", help="the new name")
    parser.add_argument("--user", required=True, help="the end user it belongs to")
    parser.add_argument(
        "--auto", action="store_true", help="let Dify generate the name"
    )
    args = parser.parse_args(argv)
    if (args.name is None) != args.auto:
        parser.error("give either a NAME or --auto")

    try:
        conversation = asyncio.run(
            rename(
                args.conversation_id,
                user=args.user,
                name=args.name,
                auto_generate=args.auto,
            )
        )
    except DifyError as error:
        # The message names the problem; it never contains the API key.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{conversation.id} is now named {conversation.name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
