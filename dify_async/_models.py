"""The request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from ._validation import (
    check_auto_generate,
    check_name,
    check_user,
    normalize_conversation_id,
)

__all__ = ["Conversation", "RenameRequest"]


def _lower(value: str) -> str:
    return value.lower()


@attrs.frozen
class Conversation:
    """A conversation as the server returned it after a rename.

    Attributes:
        id: The conversation id, as the server sent it, in lower case.
        name: The conversation's name, exactly as stored (not stripped).
        inputs: The app's input variables for this conversation.
        status: ``"normal"`` in practice; other values are kept as sent.
        introduction: The app's opening statement (``""`` when none), or
            ``None``.
        created_at: When the conversation was created (aware UTC), or ``None``.
        updated_at: When it was last updated (aware UTC), or ``None``. A manual
            rename sets it to now; ``auto_generate`` leaves it alone.
    """

    id: str = attrs.field(converter=_lower)
    name: str
    inputs: dict[str, Any] = attrs.field(factory=dict)
    status: str = "normal"
    introduction: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen
class RenameRequest:
    """One rename, validated when it is built.

    Args:
        conversation_id: The conversation's UUID, as a ``str`` in any spelling
            :class:`uuid.UUID` accepts, or a :class:`uuid.UUID`. Stored in
            canonical lower-case form.
        user: The end-user identifier that owns the conversation.
        name: The new name, sent exactly as given. Required unless
            *auto_generate* is true.
        auto_generate: Ask the server to generate a title from the
            conversation's first message (an LLM call on the server).

    Raises:
        InvalidRequestError: an argument would be refused by the server.
    """

    conversation_id: str = attrs.field(converter=normalize_conversation_id)
    user: str
    name: str | None = None
    auto_generate: bool = False

    def __attrs_post_init__(self) -> None:
        check_user(self.user)
        check_auto_generate(self.auto_generate)
        check_name(self.name, auto_generate=self.auto_generate)
