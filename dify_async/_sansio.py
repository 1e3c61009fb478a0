"""The sans-I/O core: build the request, read the response.

Pure functions with no network and no event loop, so every answer a server can
give is testable directly. :func:`build_request` makes the request exactly as
it goes on the wire (URL, headers, body bytes); :func:`decode_response` turns
what came back (status, headers, the body as read, and whether it was read
whole) into a :class:`Conversation` or the right :class:`DifyError`. Server
text kept in an error never holds the API key: it is redacted here.
"""

from __future__ import annotations

import json
import json.encoder
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Final, NamedTuple

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
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from ._models import Conversation, RenameRequest

__all__ = [
    "REDACTED",
    "Endpoint",
    "PreparedRequest",
    "build_request",
    "decode_response",
    "excerpt",
    "make_endpoint",
    "redact",
]

METHOD: Final = "POST"
EXCERPT_LIMIT: Final = 300
REDACTED: Final = "***"
"""What the API key is replaced with in server text kept by an error."""

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
class Endpoint:
    """What every request of one client shares: base URL, headers, the key.

    Built once per client by :func:`make_endpoint`. The headers and the key
    are kept out of the ``repr``.
    """

    base_url: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    secret: bytes = attrs.field(repr=False)
    base: URL = attrs.field(init=False, repr=False)
    """*base_url* parsed: every request's URL is made from it."""
    base_path: str = attrs.field(init=False, repr=False)
    """Its path, without a trailing slash."""

    @base.default
    def _parse_base_url(self) -> URL:
        return URL(self.base_url, encoded=True)

    @base_path.default
    def _base_path(self) -> str:
        return self.base.raw_path.rstrip("/")


def make_endpoint(base_url: str, api_key: str, user_agent: str) -> Endpoint:
    """Return the shared parts of every rename a client sends.

    Args:
        base_url: A checked base URL without a trailing slash.
        api_key: A key that :func:`~dify_async._validation.check_api_key`
            accepted.
        user_agent: The ``User-Agent`` header.
    """
    headers = CIMultiDict(
        {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
    )
    # A read-only multidict: aiohttp takes it as it is, without a copy.
    return Endpoint(base_url, CIMultiDictProxy(headers), api_key.encode())


class PreparedRequest(NamedTuple):
    """One rename exactly as it goes on the wire, and what its answer needs.

    Attributes:
        method: The HTTP method.
        url: The full URL, already encoded.
        target: The same URL, parsed, as it is handed to aiohttp.
        headers: Every header the rename sends (kept out of the ``repr``).
        body: The JSON body (kept out of the ``repr``).
        conversation_id: The canonical id, which a success must carry back.
        idempotent: Whether sending it twice is harmless (an explicit name),
            or may cost a second LLM call (``auto_generate``).
        secret: The key, to redact from server text (kept out of the ``repr``).
    """

    method: str
    url: str
    target: URL
    headers: Mapping[str, str]
    body: bytes
    conversation_id: str
    idempotent: bool
    secret: bytes

    def __repr__(self) -> str:
        return f"PreparedRequest(method={self.method!r}, url={self.url!r})"


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


def build_request(endpoint: Endpoint, request: RenameRequest) -> PreparedRequest:
    """Return one rename as it goes on the wire.

    Args:
        endpoint: The client's base URL, headers and key.
        request: The validated rename.
    """
    conversation_id = request.conversation_id
    path = f"/conversations/{conversation_id}/name"
    return PreparedRequest(
        METHOD,
        endpoint.base_url + path,
        # From the parsed base, rather than parsing the whole URL again.
        endpoint.base.with_path(endpoint.base_path + path, encoded=True),
        endpoint.headers,
        "".join(_iterencode(unstructure_request(request), 0)).encode(),
        conversation_id,
        not request.auto_generate,
        endpoint.secret,
    )


_raw_decode: Final = json.JSONDecoder().raw_decode
_JSON_SPACE: Final = " \t\n\r"  # the white space JSON allows around a value
_NO_SECRET: Final = b"\x00no secret\x00"  # a key never holds NUL


def decode_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    request: PreparedRequest | None = None,
    complete: bool = True,
) -> Conversation:
    """Turn a response into a :class:`Conversation`, or raise the right error.

    Args:
        status: The HTTP status.
        headers: The response headers.
        body: The decoded body as read.
        request: The request this answers: its method and URL go into
            errors, a success must carry its conversation id, and its key is
            redacted from any server text an error keeps. ``None`` skips
            all three (for tests of the decoding alone).
        complete: ``False`` when the body went past ``max_response_size``
            and was not read whole.

    Raises:
        APIStatusError: any status outside 2xx, as the subclass for that
            status (see the exception tree); a plain :class:`APIStatusError`
            for statuses outside 100-599.
        APIResponseValidationError: 2xx, but the body is not the requested
            conversation.
    """
    secret = _NO_SECRET if request is None else request.secret
    # find(), not "in": bytes.__contains__ first tries the key as an int,
    # raising and clearing a TypeError at every call.
    if body.find(secret) != -1:
        body = redact(body, secret)
    if 200 <= status < 300:  # noqa: PLR2004
        conversation = _decode_conversation(status, headers, body, complete, request)
        if request is None or conversation.id == request.conversation_id:
            return conversation
        return _check_id(conversation, status, headers, body, request)
    raise _status_error(status, headers, body, complete, request)


def redact(text: bytes, secret: bytes) -> bytes:
    """Return *text* with every occurrence of *secret* replaced by ``***``."""
    return text.replace(secret, REDACTED.encode())


def _safe_headers(
    headers: Mapping[str, str], request: PreparedRequest | None
) -> CIMultiDictProxy[str]:
    """The headers an error keeps: read-only, case-insensitive, key redacted."""
    if request is not None:
        secret = request.secret.decode()
        if any(secret in name or secret in value for name, value in headers.items()):
            return CIMultiDictProxy(
                CIMultiDict(
                    (name.replace(secret, REDACTED), value.replace(secret, REDACTED))
                    for name, value in headers.items()
                )
            )
    if isinstance(headers, CIMultiDictProxy):
        return headers
    return CIMultiDictProxy(CIMultiDict(headers))


def _redact_json(value: object, request: PreparedRequest | None) -> object:
    """*value* (decoded JSON) with the key redacted from every string in it.

    Catches the key however the server spelled it (JSON escapes, UTF-16):
    decoding has turned it back into plain text.
    """
    if request is None or isinstance(value, bool | int | float | None):
        return value
    secret = request.secret.decode()
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        return "(not shown: nested too deeply)"
    if secret not in text:
        return value
    return json.loads(text.replace(secret, REDACTED))


def excerpt(body: bytes, content_type: str | None = None) -> str:
    """Return a short, single-line, printable excerpt of a non-JSON body.

    For an HTML page this is its ``<title>`` when it has one (gateways put the
    status text there), else its text without tags.
    """
    text = body[: EXCERPT_LIMIT * 8].decode("utf-8", "replace")
    if "html" in (content_type or "") or text.lstrip()[:1] == "<":
        title = _TITLE(text)
        text = title[1] if title else _TAGS(" ", text)
    return _printable(text)


def _printable(text: str) -> str:
    """*text* on one line, printable, at most :data:`EXCERPT_LIMIT` characters."""
    text = text[: EXCERPT_LIMIT * 8]
    text = _SPACE(" ", "".join(c if c.isprintable() else " " for c in text)).strip()
    if len(text) > EXCERPT_LIMIT:
        text = text[: EXCERPT_LIMIT - 3] + "..."
    return text


def _json(body: bytes) -> object:
    """The JSON value of *body*; raise ValueError when it has none.

    Deep nesting (RecursionError), invalid UTF-8 and numbers too long to
    convert all count as "not JSON".
    """
    try:
        # json.loads(bytes) guesses the encoding in Python at every call; by
        # its own rule, a body that opens with "{" and a non-NUL byte is UTF-8.
        if body[:1] == b"{" and body[1:2] != b"\x00":
            # raw_decode: json.loads without its two white-space searches,
            # since nothing comes before the "{"; only trailing space may follow.
            text = body.decode("utf-8", "surrogatepass")
            value, end = _raw_decode(text)
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                raise ValueError("extra data after the JSON value")
            return value
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:  # a ValueError, said plainly
        raise ValueError("not valid UTF-8") from exc


def _decode_conversation(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    complete: bool,
    request: PreparedRequest | None,
) -> Conversation:
    if not complete:
        message = "a body larger than max_response_size; not read"
        raise _invalid(status, headers, request, message, None)
    try:
        data = _json(body)
    except ValueError:
        shown = excerpt(body, headers.get("Content-Type"))
        message = f"a body that is not JSON: {shown!r}"
        raise _invalid(status, headers, request, message, shown) from None
    if type(data) is not dict:
        message = f"a JSON {type(data).__name__}, not a conversation"
        raise _invalid(status, headers, request, message, _redact_json(data, request))
    try:
        return structure_conversation_quickly(data, Conversation)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError):
        # The quick hook does not say which field is wrong; this one does.
        try:
            return structure_conversation(data, Conversation)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            detail = _describe(exc)
            if request is not None:
                detail = detail.replace(request.secret.decode(), REDACTED)
            message = f"a body that is not a conversation: {detail}"
            redacted = _redact_json(data, request)
            raise _invalid(status, headers, request, message, redacted) from exc


def _invalid(
    status: int,
    headers: Mapping[str, str],
    request: PreparedRequest | None,
    message: str,
    shown: object,
) -> APIResponseValidationError:
    """The error for a 2xx whose body is not the requested conversation."""
    return APIResponseValidationError(
        f"HTTP {status} with {message}",
        status_code=status,
        headers=_safe_headers(headers, request),
        body=shown,
        method=METHOD if request is None else request.method,
        url=None if request is None else request.url,
    )


def _check_id(
    conversation: Conversation,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request: PreparedRequest,
) -> Conversation:
    """Accept another spelling of the requested id; refuse another id."""
    try:
        same = uuid.UUID(conversation.id) == uuid.UUID(request.conversation_id)
    except ValueError:
        same = False
    if same:
        return conversation
    raise APIResponseValidationError(
        f"HTTP {status} for conversation {request.conversation_id} carried "
        f"another conversation's id: {_printable(conversation.id)!r}",
        status_code=status,
        headers=_safe_headers(headers, request),
        body=excerpt(body),
        method=request.method,
        url=request.url,
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        notes = cattrs.transform_error(exc, path="body")
        return "; ".join(notes)[:EXCERPT_LIMIT]
    return str(exc)[:EXCERPT_LIMIT]


def _status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    complete: bool,
    request: PreparedRequest | None,
) -> APIStatusError:
    headers = _safe_headers(headers, request)
    code: str | None = None
    decoded: object = None
    if complete:
        try:
            decoded = _redact_json(_json(body), request)
        except ValueError:
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
        message = f"HTTP {status} {_reason(status)}".rstrip()
        if not complete:
            message += ", with a body larger than max_response_size (not read)"
        else:
            shown = decoded if isinstance(decoded, str) else excerpt(body)
            if shown and shown not in message:
                message += f": {shown}"
        if status == 404:  # noqa: PLR2004
            # Dify answers an unknown conversation in JSON; a page means the
            # URL matched no route at all.
            message += " (no Dify route matched: check that base_url ends in /v1)"
    return _status_class(status)(
        message,
        status_code=status,
        code=code,
        headers=headers,
        body=decoded,
        method=METHOD if request is None else request.method,
        url=None if request is None else request.url,
    )


def _status_class(status: int) -> type[APIStatusError]:
    cls = _STATUS_ERRORS.get(status)
    if cls is not None:
        return cls
    if 500 <= status < 600:  # noqa: PLR2004
        return InternalServerError
    return APIStatusError


def _redirect_message(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("Location")
    if location is None:
        return f"HTTP {status} redirect without a Location; not followed"
    # Show where it points, without any query string (it could carry a token).
    shown = _printable(location.split("?", 1)[0])
    return (
        f"HTTP {status} redirect to {shown} not followed (the API key is never "
        "sent to another URL); check base_url: use https:// and include /v1"
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
