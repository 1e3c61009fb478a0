"""The ``rename`` command: rename one conversation and print it."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import datetime
from typing import Any, Final

import attrs

from dify_async import Conversation, DifyError, InvalidRequestError, RenameRequest

from ._connection import make_client
from ._messages import UsageError, describe, error_record, hint, say, warn
from ._parser import EXIT_FAILED, EXIT_OK
from ._signals import signals_cancel
from ._summary import UNTITLED_NOTE, is_untitled

__all__ = ["conversation_json", "rename_command"]

# A request's fields, by the command line's names for them.
_FIELD: Final = re.compile(r"^(conversation_id|user|name)\b")
_ARGUMENTS: Final = {
    "conversation_id": "CONVERSATION_ID",
    "user": "--user",
    "name": "--name",
}


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """A conversation as the server's JSON, timestamps in unix seconds.

    Args:
        conversation: The conversation.

    Returns:
        Its fields, ready for :func:`json.dumps`.
    """
    return attrs.asdict(
        conversation,
        value_serializer=lambda _, __, value: (
            _unix(value) if isinstance(value, datetime) else value
        ),
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else str(moment).replace("+00:00", " UTC")


def _quoted(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def rename_command(args: argparse.Namespace) -> int:
    """Run ``dify-async rename``.

    Args:
        args: The parsed command line.

    Returns:
        The exit status.

    Raises:
        UsageError: The arguments cannot make a request, or there is no key.
    """
    try:
        request = RenameRequest(
            args.conversation_id, args.user, args.name, bool(args.auto_generate)
        )
    except InvalidRequestError as exc:
        message = _FIELD.sub(lambda match: _ARGUMENTS[match[1]], exc.message)
        raise UsageError(message) from None
    make_client(args)  # a missing key or a refused option, before the loop
    return asyncio.run(_rename(args, request))


async def _rename(args: argparse.Namespace, request: RenameRequest) -> int:
    received: list[int] = []
    try:
        with signals_cancel(received.append):
            return await _rename_once(args, request)
    except asyncio.CancelledError:
        if not received:
            raise
    warn(f"{args.prog}: interrupted")
    return 128 + received[0]


async def _rename_once(args: argparse.Namespace, request: RenameRequest) -> int:
    async with make_client(args) as dify:
        try:
            conversation = await dify.rename_conversation(
                request.conversation_id,
                user=request.user,
                name=request.name,
                auto_generate=request.auto_generate,
            )
        except DifyError as error:
            if args.json:
                say(json.dumps({"ok": False, **error_record(error)}))
            warn(f"{args.prog}: {describe(error)}")
            found = hint(error, dify.base_url)
            if found is not None:
                warn(f"hint: {found}")
            return EXIT_FAILED
    if is_untitled(request, conversation):
        warn(f"{args.prog}: warning: {UNTITLED_NOTE}")
    if args.json:
        say(json.dumps(conversation_json(conversation), ensure_ascii=False))
        return EXIT_OK
    verb = "Generated a name for" if request.auto_generate else "Renamed"
    say(f"{verb} conversation {conversation.id}")
    say(f"  name          {_quoted(conversation.name)}")
    say(f"  status        {conversation.status}")
    if conversation.inputs:
        say(f"  inputs        {_quoted(conversation.inputs)}")
    if conversation.introduction:
        say(f"  introduction  {_quoted(conversation.introduction)}")
    say(f"  created at    {_when(conversation.created_at)}")
    say(f"  updated at    {_when(conversation.updated_at)}")
    return EXIT_OK
