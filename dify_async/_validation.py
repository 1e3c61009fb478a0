"""Checks on user input, made before anything is sent.

Each check mirrors what the Dify server would refuse, so that a mistake is
reported at once, naming the argument, instead of costing a round trip (or, for
a name over 255 characters, a server error that no retry can fix).
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Final

from yarl import URL

from ._exceptions import InvalidRequestError

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_NAME_LENGTH",
    "check_api_key",
    "check_auto_generate",
    "check_callable",
    "check_count",
    "check_name",
    "check_seconds",
    "check_user",
    "normalize_base_url",
    "normalize_conversation_id",
]

DEFAULT_BASE_URL: Final = "https://api.dify.ai/v1"

MAX_NAME_LENGTH = 255
"""Dify stores names in a ``String(255)`` column; longer ones fail as a 500."""

_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
# C0 controls, DEL and C1 controls: never valid in a header, never meant in an id.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]").search
# RFC 6750 b64token characters plus what Dify's keys use; no spaces, ASCII only.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/=]+").fullmatch


def normalize_conversation_id(value: object) -> str:
    """Return *value* as a canonical lower-case 8-4-4-4-12 UUID string.

    Accepts a :class:`uuid.UUID` or any spelling :class:`uuid.UUID` parses
    (upper case, braces, no hyphens, ``urn:uuid:``).

    Raises:
        InvalidRequestError: *value* is not a UUID.
    """
    if isinstance(value, str):
        if _CANONICAL_UUID(value):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            shown = value if len(value) <= 64 else value[:61] + "..."  # noqa: PLR2004
            raise InvalidRequestError(
                f"conversation_id must be a UUID, got {shown!r}"
            ) from None
    if isinstance(value, uuid.UUID):
        return str(value)
    raise InvalidRequestError(
        f"conversation_id must be a str or uuid.UUID, got {type(value).__name__}"
    )


def check_name(name: object, *, auto_generate: bool) -> str | None:
    """Check a new conversation name against what Dify accepts.

    The name is returned unchanged: Dify stores it exactly as sent.

    Raises:
        InvalidRequestError: the name is missing (without *auto_generate*), not
            a string, blank, longer than 255 characters or not valid Unicode.
    """
    if name is None:
        if auto_generate:
            return None
        raise InvalidRequestError(
            "name is required unless auto_generate=True (Dify refuses a rename "
            "without a name)"
        )
    if not isinstance(name, str):
        raise InvalidRequestError(f"name must be a str, got {type(name).__name__}")
    if auto_generate:
        # Dify ignores the name when it generates one; send it as given.
        return name
    if not name.strip():
        raise InvalidRequestError("name must not be empty or only white space")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"name is {len(name)} characters long; Dify stores at most "
            f"{MAX_NAME_LENGTH}"
        )
    if not name.isascii():  # no surrogate can hide in ASCII
        _check_unicode("name", name)
    return name


def check_user(user: object) -> str:
    """Check the end-user identifier that owns the conversation.

    Raises:
        InvalidRequestError: *user* is not a non-blank string free of control
            characters.
    """
    if not isinstance(user, str):
        raise InvalidRequestError(
            f"user must be a str (the end-user id that owns the conversation), "
            f"got {type(user).__name__}"
        )
    if not user.strip():
        raise InvalidRequestError(
            "user must not be empty: Dify would address the anonymous "
            "DEFAULT-USER's conversations instead"
        )
    if _CONTROL(user):
        raise InvalidRequestError("user must not contain control characters")
    if not user.isascii():  # no surrogate can hide in ASCII
        _check_unicode("user", user)
    return user


def check_auto_generate(value: object) -> bool:
    """Check that *auto_generate* is a real :class:`bool`.

    Raises:
        InvalidRequestError: it is anything else (``"true"``, ``1``, ...).
    """
    if value is True or value is False:
        return value
    raise InvalidRequestError(
        f"auto_generate must be a bool, got {type(value).__name__}"
    )


def check_api_key(api_key: object) -> str:
    """Check that the API key can go into an ``Authorization`` header.

    The key itself never appears in the error message.

    Raises:
        InvalidRequestError: the key is not a string, is empty, or holds
            characters that cannot appear in a bearer token (white space,
            control characters, non-ASCII).
    """
    if not isinstance(api_key, str):
        raise InvalidRequestError(
            f"api_key must be a str, got {type(api_key).__name__}"
        )
    if not api_key:
        raise InvalidRequestError("api_key is empty: pass api_key= or set DIFY_API_KEY")
    if not _TOKEN(api_key):
        raise InvalidRequestError(
            "api_key contains characters not allowed in a bearer token "
            "(white space, control characters or non-ASCII); check how it "
            "was loaded (a trailing newline is common)"
        )
    return api_key


def _check_unicode(field: str, value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidRequestError(
            f"{field} is not valid Unicode (it holds a lone surrogate)"
        ) from None


def normalize_base_url(base_url: object) -> str:
    """Check a base URL and return it without a trailing slash.

    Raises:
        InvalidRequestError: it is not an absolute ``http(s)`` URL, or it holds
            credentials, a query or a fragment.
    """
    if not isinstance(base_url, str):
        raise InvalidRequestError(
            f"base_url must be a str, got {type(base_url).__name__}"
        )
    try:
        url = URL(base_url.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"base_url is not a URL: {exc}") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise InvalidRequestError(
            "base_url must be an absolute http:// or https:// URL such as "
            f"{DEFAULT_BASE_URL!r}"
        )
    if url.user is not None or url.password is not None:
        raise InvalidRequestError(
            "base_url must not contain credentials; pass the key as api_key"
        )
    if url.query_string or url.fragment:
        raise InvalidRequestError("base_url must not have a query or a fragment")
    return str(url).rstrip("/")


def check_seconds(
    value: object, what: str, *, allow_none: bool = False
) -> float | None:
    """Return *value* as float seconds if it is a positive, finite number.

    Args:
        value: The setting.
        what: Its name, for the message.
        allow_none: Whether ``None`` ("no limit") is accepted.

    Raises:
        InvalidRequestError: it is not.
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value > 0
        and math.isfinite(value)
    ):
        return float(value)
    expected = "positive seconds or None" if allow_none else "positive seconds"
    raise InvalidRequestError(f"{what} must be {expected}, got {value!r}")


def check_count(value: object, what: str, *, minimum: int) -> int:
    """Return *value* if it is an int of at least *minimum* (bools are not).

    Raises:
        InvalidRequestError: it is not.
    """
    if type(value) is int and value >= minimum:
        return value
    raise InvalidRequestError(f"{what} must be an int >= {minimum}, got {value!r}")


def check_callable(value: object, what: str) -> None:
    """Check that *value* is ``None`` or callable.

    Raises:
        InvalidRequestError: it is neither.
    """
    if value is not None and not callable(value):
        raise InvalidRequestError(
            f"{what} must be a callable or None, got {type(value).__name__}"
        )
