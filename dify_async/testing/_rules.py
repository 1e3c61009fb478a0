"""Dify's rules for the rename call, as pure functions: no sockets, no server.

Each function implements one step of what a Dify 1.x server does with
``POST /v1/conversations/{id}/name``, in the order Dify runs them:

1. :func:`conversation_id_from_path`: the route (Werkzeug's UUID converter);
2. :func:`app_for_token`: the ``Authorization`` header, the app's status;
3. :func:`require_json_content_type` and :func:`decode_json`: the body;
4. :func:`require_object`: Dify reads ``user`` from the body at once;
5. :func:`require_chat_app`: the app mode;
6. :func:`parse_payload`: the payload model (pydantic, lax booleans);
7. :func:`apply_rename`: the conversation, the name rule or the generated
   title;
8. :func:`conversation_body`: the answer.

A refusal is raised as an :class:`AppError`, which carries the status, Dify's
``code`` and ``message`` of the JSON error answer.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_USER",
    "NOT_FOUND_PAGE",
    "App",
    "AppError",
    "RenameArgs",
    "RenameOutcome",
    "StoredConversation",
    "app_for_token",
    "apply_rename",
    "authorization_token",
    "canonical_id",
    "conversation_body",
    "conversation_id_from_path",
    "cut_title",
    "decode_json",
    "lax_bool",
    "llm_title",
    "method_not_allowed",
    "parse_payload",
    "require_chat_app",
    "require_json_content_type",
    "require_object",
    "validation_message",
]

DEFAULT_USER: Final = "DEFAULT-USER"
"""The end user Dify picks when a request names none."""

NAME_MAX_LENGTH: Final = 255
"""The length of the name column: a longer name fails in the database."""

TITLE_MAX_LENGTH: Final = 75
"""Generated titles longer than this are cut, and ``"..."`` is appended."""

NOT_FOUND_PAGE: Final = (
    b"<!doctype html>\n"
    b"<html lang=en>\n"
    b"<title>404 Not Found</title>\n"
    b"<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server. If you entered the URL "
    b"manually please check your spelling and try again.</p>\n"
)
"""Werkzeug's routing 404 page, sent for a path that matches no route."""

MSG_NO_BEARER: Final = "Authorization header must be provided and start with 'Bearer'"
MSG_BAD_SCHEME: Final = "Authorization scheme must be 'Bearer'"
MSG_BAD_TOKEN: Final = "Access token is invalid"  # noqa: S105
MSG_API_DISABLED: Final = "The app's API service has been disabled."
MSG_NOT_JSON: Final = (
    "Did not attempt to load JSON data because the request Content-Type "
    "was not 'application/json'."
)
MSG_EMPTY_JSON: Final = "Invalid JSON payload received or JSON payload is empty."
MSG_NOT_CHAT_APP: Final = "Please check if your app mode matches the right API route."
MSG_NOT_FOUND: Final = "Conversation Not Exists."
MSG_NOT_ALLOWED: Final = "The method is not allowed for the requested URL."
MSG_INTERNAL: Final = "Internal Server Error"

# Werkzeug's UUID converter: 8-4-4-4-12 hex digits, either case, nothing else.
_RENAME_PATH: Final = re.compile(
    r"/v1/conversations/"
    r"([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})"
    r"/name"
).fullmatch

# pydantic's lax booleans (compared case-insensitively).
_TRUE_STRINGS: Final = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_STRINGS: Final = frozenset({"0", "off", "f", "false", "n", "no"})
_PAYLOAD_MODEL: Final = "ConversationRenamePayload"
_PYDANTIC_DOCS: Final = "https://errors.pydantic.dev/2.11/v/"
_SHOWN_INPUT_MAX: Final = 50
_MSG_NOT_UNICODE: Final = (
    "Input should be a valid string, unable to parse raw data as a unicode string"
)

_FieldError = tuple[str | None, str, str, object]
"""One pydantic error: location (``None`` for the model), message, type, input."""


class AppError(Exception):
    """A refusal by the Dify application: its JSON error answer.

    Attributes:
        status: The HTTP status.
        code: Dify's error code, such as ``"invalid_param"``.
        message: Dify's error message.
        headers: Extra response headers (``WWW-Authenticate`` on a 401).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"code": ..., "message": ..., "status": ...}``."""
        return {"code": self.code, "message": self.message, "status": self.status}


@attrs.frozen
class App:
    """A Dify app that API keys belong to.

    Attributes:
        chat: Whether it is a chat-style app (chat, agent, chatflow); other
            apps answer 400 ``not_chat_app``.
        api_enabled: Whether its Service API is on; when off, 403.
    """

    chat: bool
    api_enabled: bool


@attrs.frozen
class RenameArgs:
    """A validated rename payload.

    Attributes:
        name: The new name as sent (``None`` only with ``auto_generate``).
        auto_generate: Whether to title the conversation from its first
            message.
        user: The end user, ``"DEFAULT-USER"`` when the body names none.
    """

    name: str | None
    auto_generate: bool
    user: str


@attrs.frozen(kw_only=True)
class StoredConversation:
    """A snapshot of one conversation as the fake server stores it.

    Attributes:
        id: The conversation id, a lower-case UUID string.
        user: The end user the conversation belongs to.
        name: The current name, exactly as it was last set.
        inputs: The conversation's input variables.
        status: The conversation status, ``"normal"`` by default.
        introduction: The app's opening statement, ``""`` or ``None`` when
            there is none.
        created_at: Creation time in unix seconds, or ``None``.
        updated_at: Time of the last manual rename (else of creation) in unix
            seconds, or ``None``.
        messages: The queries of the conversation's messages, oldest first.
        rename_count: How many renames (manual or generated) were stored.
    """

    id: str
    user: str
    name: str
    inputs: dict[str, Any]
    status: str
    introduction: str | None
    created_at: int | None
    updated_at: int | None
    messages: tuple[str, ...]
    rename_count: int = 0

    def _snapshot(self) -> StoredConversation:
        return attrs.evolve(self, inputs=copy.deepcopy(self.inputs))


@attrs.frozen
class RenameOutcome:
    """What :func:`apply_rename` did.

    Attributes:
        conversation: The conversation to answer with (the stored one when
            nothing changed).
        stored: Whether a new name was stored.
        llm_called: Whether an LLM call was made (and paid for).
    """

    conversation: StoredConversation
    stored: bool
    llm_called: bool


# -- routing and authentication ------------------------------------------------


def canonical_id(value: str) -> str:
    """Spell a UUID in lower-case 8-4-4-4-12 form; ValueError if it is none."""
    return str(uuid.UUID(str(value)))


def conversation_id_from_path(path: str) -> str | None:
    """The lower-case id in a rename route's path, or ``None`` for no route."""
    match = _RENAME_PATH(path)
    return None if match is None else match[1].lower()


def method_not_allowed() -> AppError:
    """The 405 answer to any method but POST on the rename route."""
    return AppError(405, "method_not_allowed", MSG_NOT_ALLOWED, {"Allow": "POST"})


def _unauthorized(message: str) -> AppError:
    return AppError(
        401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="api"'}
    )


def authorization_token(header: str | None) -> str:
    """Take the token out of an ``Authorization`` header, as Dify does.

    Raises:
        AppError: 401 ``unauthorized``: no header, no space in it, or a
            scheme other than ``Bearer`` (in any case).
    """
    if header is None or " " not in header:
        raise _unauthorized(MSG_NO_BEARER)
    parts = header.split(None, 1)
    if len(parts) != 2:  # noqa: PLR2004
        raise _unauthorized(MSG_NO_BEARER)
    scheme, token = parts
    if scheme.lower() != "bearer":
        raise _unauthorized(MSG_BAD_SCHEME)
    return token


def app_for_token(header: str | None, apps: Mapping[str, App]) -> App:
    """Find the app (in *apps*, by key) that a header authenticates, and check it.

    Raises:
        AppError: 401 ``unauthorized`` for a bad header or an unknown key;
            403 ``forbidden`` when the app's API is disabled.
    """
    app = apps.get(authorization_token(header))
    if app is None:
        raise _unauthorized(MSG_BAD_TOKEN)
    if not app.api_enabled:
        raise AppError(403, "forbidden", MSG_API_DISABLED)
    return app


# -- the body ------------------------------------------------------------------


def require_json_content_type(content_type: str) -> None:
    """Refuse (415) a content type other than ``application/json`` or ``*+json``."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise AppError(415, "unsupported_media_type", MSG_NOT_JSON)


def decode_json(raw: bytes) -> object:
    """Decode a body as JSON; 400 ``bad_request`` with Dify's message if not."""
    try:
        return json.loads(raw)
    except ValueError as exc:
        text = f"Failed to decode JSON object: {exc}"
        if text.endswith("Expecting value: line 1 column 1 (char 0)"):
            text = MSG_EMPTY_JSON
        raise AppError(400, "bad_request", text) from None


def require_object(payload: object) -> dict[str, Any]:
    """Refuse a JSON body that is not an object with a 500 ``unknown``.

    Dify reads ``user`` from the body (``body.get("user")``) before the
    payload is validated, so a list, string, number or ``null`` fails there.
    """
    if not isinstance(payload, dict):
        raise AppError(500, "unknown", MSG_INTERNAL)
    return payload


def require_chat_app(app: App) -> None:
    """Refuse (400 ``not_chat_app``) an app that is not chat-style."""
    if not app.chat:
        raise AppError(400, "not_chat_app", MSG_NOT_CHAT_APP)


# -- the payload ---------------------------------------------------------------


def lax_bool(value: object) -> bool | None:
    """Read a boolean as pydantic's lax mode does; ``None`` when it cannot.

    JSON booleans, ``0``/``1`` and the strings ``"1"``, ``"on"``, ``"t"``,
    ``"true"``, ``"y"``, ``"yes"`` (and their false counterparts), in any case.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE_STRINGS:
            return True
        if lowered in _FALSE_STRINGS:
            return False
    return None


def _is_unicode(text: str) -> bool:
    # A lone surrogate (an escaped "\ud800" in the JSON) cannot be encoded.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_errors(field: str, value: object) -> list[_FieldError]:
    if not isinstance(value, str):
        return [(field, "Input should be a valid string", "string_type", value)]
    if not _is_unicode(value):
        return [(field, _MSG_NOT_UNICODE, "string_unicode", value)]
    return []


def parse_payload(payload: object) -> RenameArgs:
    """Validate a request body like Dify's pydantic payload model.

    Args:
        payload: The decoded JSON body.

    Returns:
        The arguments of the rename.

    Raises:
        AppError: 500 ``unknown`` when the body is not an object (see
            :func:`require_object`); 400 ``invalid_param`` with pydantic's
            message for values of the wrong type, a name that is not valid
            Unicode, or a name that is missing or blank while
            ``auto_generate`` is false.
    """
    body = require_object(payload)
    errors: list[_FieldError] = []
    name = body.get("name")
    if name is not None:
        errors += _string_errors("name", name)
    raw_auto = body.get("auto_generate", False)
    auto_generate = lax_bool(raw_auto)
    if auto_generate is None:
        if isinstance(raw_auto, int | float | str):
            message, kind = (
                "Input should be a valid boolean, unable to interpret input",
                "bool_parsing",
            )
        else:
            message, kind = "Input should be a valid boolean", "bool_type"
        errors.append(("auto_generate", message, kind, raw_auto))
    # Any false-ish user is Dify's anonymous end user.
    user = body.get("user") or DEFAULT_USER
    if not isinstance(user, str):
        errors.append(("user", "Input should be a valid string", "string_type", user))
    if errors:
        raise AppError(400, "invalid_param", validation_message(errors))
    if not auto_generate and (not isinstance(name, str) or not name.strip()):
        error = "Value error, name is required when auto_generate is false"
        raise AppError(
            400,
            "invalid_param",
            validation_message([(None, error, "value_error", body)]),
        )
    return RenameArgs(name=name, auto_generate=bool(auto_generate), user=user)


def validation_message(errors: Sequence[_FieldError]) -> str:
    """Format ``(location, message, type, input)`` errors as pydantic does.

    The location is a field name, or ``None`` for the whole model.
    """
    count = len(errors)
    lines = [
        f"{count} validation error{'' if count == 1 else 's'} for {_PAYLOAD_MODEL}"
    ]
    for location, message, kind, value in errors:
        if location is not None:
            lines.append(location)
        shown = repr(value)
        if len(shown) > _SHOWN_INPUT_MAX:
            shown = f"{shown[:25]}...{shown[-24:]}"
        lines.append(
            f"  {message} [type={kind}, input_value={shown}, "
            f"input_type={type(value).__name__}]"
        )
        lines.append(f"    For further information visit {_PYDANTIC_DOCS}{kind}")
    return "\n".join(lines)


# -- the rename ----------------------------------------------------------------


def llm_title(first_message: str) -> str:
    """Stand in for the titling LLM: the first message, stripped (may be empty)."""
    return first_message.strip()


def cut_title(answer: str) -> str:
    """Cut an LLM's title as Dify does: over 75 characters, 75 and ``"..."``."""
    if len(answer) > TITLE_MAX_LENGTH:
        return answer[:TITLE_MAX_LENGTH] + "..."
    return answer


def apply_rename(
    conversation: StoredConversation | None,
    args: RenameArgs,
    *,
    now: int,
    llm_fails: bool = False,
) -> RenameOutcome:
    """Rename a stored conversation as Dify does.

    A manual rename stores the name exactly as sent and sets ``updated_at``;
    ``auto_generate`` stores the title of the first message (see
    :func:`llm_title` and :func:`cut_title`) and leaves ``updated_at`` alone.
    When the LLM call fails, Dify swallows the failure: nothing changes and
    the answer is still a success.

    Args:
        conversation: The conversation with the requested id, or ``None``.
        args: The validated payload.
        now: The time, in unix seconds.
        llm_fails: Whether the LLM call fails.

    Returns:
        What happened.

    Raises:
        AppError: 404 ``not_found`` (no such conversation, or another user's);
            400 ``invalid_param`` with an empty message (``auto_generate`` on
            a conversation without messages); 500 ``unknown`` (a name longer
            than the 255-character column).
    """
    if conversation is None or conversation.user != args.user:
        raise AppError(404, "not_found", MSG_NOT_FOUND)
    if args.auto_generate:
        if not conversation.messages:
            raise AppError(400, "invalid_param", "")
        if llm_fails:
            return RenameOutcome(conversation, stored=False, llm_called=True)
        updated = attrs.evolve(
            conversation,
            name=cut_title(llm_title(conversation.messages[0])),
            rename_count=conversation.rename_count + 1,
        )
        return RenameOutcome(updated, stored=True, llm_called=True)
    name = args.name or ""
    if len(name) > NAME_MAX_LENGTH:
        raise AppError(500, "unknown", MSG_INTERNAL)
    updated = attrs.evolve(
        conversation,
        name=name,
        updated_at=now,
        rename_count=conversation.rename_count + 1,
    )
    return RenameOutcome(updated, stored=True, llm_called=False)


def conversation_body(conversation: StoredConversation) -> dict[str, Any]:
    """The JSON body of a successful rename: the conversation's seven fields."""
    return {
        "id": conversation.id,
        "name": conversation.name,
        "inputs": conversation.inputs,
        "status": conversation.status,
        "introduction": conversation.introduction,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }
