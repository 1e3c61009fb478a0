"""The sans-I/O core: build the request, read the response.

Pure functions with no network and no event loop, so every answer a server can
give is testable directly. The aiohttp client is a thin shell around them.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import cattrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._converter import (
    structure_conversation,
    structure_conversation_quickly,
    unstructure_request,
)
from ._exceptions import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from ._models import Conversation, RenameRequest
from ._retry_after import parse_retry_after

__all__ = [
    "DEFAULT_BASE_URL",
    "PreparedRequest",
    "build_headers",
    "build_request",
    "decode_response",
    "encode_body",
    "excerpt",
    "normalize_base_url",
]

DEFAULT_BASE_URL: Final = "https://api.dify.ai/v1"
METHOD: Final = "POST"
EXCERPT_LIMIT: Final = 300

_STATUS_ERRORS: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitError,
}
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL).search
_TAGS = re.compile(r"<[^>]*>").sub
_SPACE = re.compile(r"\s+").sub


@attrs.frozen
class PreparedRequest:
    """Everything needed to put one rename on the wire."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


def normalize_base_url(base_url: str) -> str:
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


def build_headers(api_key: str, user_agent: str) -> dict[str, str]:
    """Return the headers every rename sends."""
    return {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": user_agent,
    }


def _make_iterencode() -> Callable[[object, int], Iterable[str]]:
    """``json.dumps(obj, separators=(",", ":"))`` in chunks, its encoder built once.

    ``JSONEncoder.encode`` builds a new C encoder at every call; this one is
    built once with the same settings (no circular check: a rename's body is
    a flat object of strings and booleans).
    """
    encoder = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - without CPython's accelerator
        return lambda obj, _: (encoder.encode(obj),)
    return make(  # type: ignore[no-any-return]
        None,
        encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,  # noqa: FBT003  (sort_keys, positional in the C signature)
        False,  # noqa: FBT003  (skipkeys)
        True,  # noqa: FBT003  (allow_nan)
    )


_iterencode: Final = _make_iterencode()


def encode_body(request: RenameRequest) -> bytes:
    """Return the JSON body of a rename, through the converter."""
    return "".join(_iterencode(unstructure_request(request), 0)).encode()


def build_request(
    base_url: str, headers: Mapping[str, str], request: RenameRequest
) -> PreparedRequest:
    """Return the method, URL, headers and body of one rename.

    Args:
        base_url: A base URL as :func:`normalize_base_url` returns it.
        headers: As :func:`build_headers` returns them.
        request: The validated rename.
    """
    return PreparedRequest(  # method, url, headers, body
        METHOD,
        f"{base_url}/conversations/{request.conversation_id}/name",
        headers,
        encode_body(request),
    )


_MULTIDICTS: Final = CIMultiDictProxy | CIMultiDict


def decode_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str = METHOD,
    url: str | None = None,
) -> Conversation:
    """Turn a response into a :class:`Conversation`, or raise the right error.

    Args:
        status: The HTTP status.
        headers: The response headers.
        body: The raw body.
        method: The request method, carried into errors.
        url: The request URL, carried into errors.

    Raises:
        APIStatusError: any status outside 2xx, as the subclass for that
            status (see the exception tree).
        APIResponseValidationError: 2xx, but the body is not a conversation.
    """
    if not isinstance(headers, _MULTIDICTS):
        headers = CIMultiDictProxy(CIMultiDict(headers))
    if 200 <= status < 300:  # noqa: PLR2004
        return _decode_conversation(status, headers, body, method, url)
    raise _status_error(status, headers, body, method, url)


def excerpt(body: bytes, content_type: str | None = None) -> str:
    """Return a short, single-line, printable excerpt of a non-JSON body.

    For an HTML page this is its ``<title>`` when it has one (gateways put the
    status text there), else its text without tags.
    """
    text = body[: EXCERPT_LIMIT * 8].decode("utf-8", "replace")
    if "html" in (content_type or "") or text.lstrip()[:1] == "<":
        title = _TITLE(text)
        text = title[1] if title else _TAGS(" ", text)
    text = _SPACE(" ", "".join(c if c.isprintable() else " " for c in text)).strip()
    if len(text) > EXCERPT_LIMIT:
        text = text[: EXCERPT_LIMIT - 3] + "..."
    return text


def _decode_conversation(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str,
    url: str | None,
) -> Conversation:
    try:
        # json.loads(bytes) guesses the encoding in Python at every call; by
        # its own rule, a body that opens with "{" and a non-NUL byte is UTF-8.
        if body[:1] == b"{" and body[1:2] != b"\x00":
            data: Any = json.loads(body.decode("utf-8", "surrogatepass"))
        else:
            data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        shown = excerpt(body, headers.get("Content-Type"))
        raise APIResponseValidationError(
            f"HTTP {status} with a body that is not JSON: {shown!r}",
            status_code=status,
            headers=headers,
            body=shown,
            method=method,
            url=url,
        ) from None
    if type(data) is not dict:
        raise APIResponseValidationError(
            f"HTTP {status} with a JSON {type(data).__name__}, not a conversation",
            status_code=status,
            headers=headers,
            body=data,
            method=method,
            url=url,
        )
    try:
        return structure_conversation_quickly(data, Conversation)
    except Exception:  # noqa: BLE001, S110  (the detailed hook below says what)
        pass
    try:
        return structure_conversation(data, Conversation)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise APIResponseValidationError(
            f"HTTP {status} with a body that is not a conversation: {_describe(exc)}",
            status_code=status,
            headers=headers,
            body=data,
            method=method,
            url=url,
        ) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        notes = cattrs.transform_error(exc, path="body")
        return "; ".join(notes)[:EXCERPT_LIMIT]
    return str(exc)[:EXCERPT_LIMIT]


def _status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str,
    url: str | None,
) -> APIStatusError:
    code: str | None = None
    decoded: object
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        decoded = excerpt(body, headers.get("Content-Type"))
    if (
        type(decoded) is dict
        and type(decoded.get("code")) is str
        and type(decoded.get("message", "")) is str
    ):
        code = decoded["code"]
        message: str = decoded.get("message", "")
    elif 300 <= status < 400:  # noqa: PLR2004
        message = _redirect_message(status, headers)
    else:
        reason = _reason(status)
        shown = decoded if isinstance(decoded, str) else excerpt(body)
        message = f"HTTP {status} {reason}".rstrip()
        if shown and shown not in message:
            message += f": {shown}"
        if status == 404:  # noqa: PLR2004
            # Dify answers an unknown conversation in JSON; a page means the
            # URL matched no route at all.
            message += " (no Dify route matched: check that base_url ends in /v1)"
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError  # noqa: PLR2004
    if cls is RateLimitError:
        return RateLimitError(
            message,
            status_code=status,
            code=code,
            headers=headers,
            body=decoded,
            retry_after=parse_retry_after(headers),
            method=method,
            url=url,
        )
    return cls(
        message,
        status_code=status,
        code=code,
        headers=headers,
        body=decoded,
        method=method,
        url=url,
    )


def _redirect_message(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("Location")
    if location is None:
        return f"HTTP {status} redirect without a Location; not followed"
    # Show where it points, without any query string (it could carry a token).
    shown = excerpt(location.split("?", 1)[0].encode())
    return (
        f"HTTP {status} redirect to {shown} not followed (the API key is never "
        "sent to another URL); check base_url: use https:// and include /v1"
    )


def _reason(status: int) -> str:
    from http import HTTPStatus  # noqa: PLC0415  (only on the error path)

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
