"""Everything dify_async raises on purpose.

The tree::

    DifyError
    ├── InvalidRequestError            bad arguments, caught before anything is sent
    ├── ClientClosedError              the client was used after closing
    ├── EventLoopError                 the client was used from another event loop
    ├── APIConnectionError             no usable answer (DNS, refused, reset, TLS)
    │   ├── APITimeoutError            an attempt or the deadline ran out of time
    │   └── CertificateVerificationError  the server's certificate was refused
    ├── APIResponseValidationError     2xx, but the body is not a conversation
    └── APIStatusError                 the server answered with an error status
        ├── BadRequestError            400 (invalid_param, bad_request, not_chat_app)
        ├── AuthenticationError        401
        ├── PermissionDeniedError      403
        ├── NotFoundError              404
        ├── MethodNotAllowedError      405
        ├── RequestTooLargeError       413
        ├── UnsupportedMediaTypeError  415
        ├── RateLimitError             429, with retry_after
        └── InternalServerError        5xx

Match on the class, on :attr:`APIStatusError.status_code` and on
:attr:`APIStatusError.code` (Dify's machine-readable code), never on the message:
its text differs between Dify versions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from ._retry_after import parse_retry_after

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CertificateVerificationError",
    "ClientClosedError",
    "DifyError",
    "EventLoopError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnsupportedMediaTypeError",
]


class DifyError(Exception):
    """Root of every error the library raises on purpose.

    Attributes:
        message: What went wrong, in words (never contains the API key).
        method: The HTTP method of the request, or ``None`` when nothing was
            about to be sent.
        url: The request URL (it never holds a secret), or ``None``.
        attempts: How many times the request was sent before this error was
            raised (``0`` when it was refused before sending).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.attempts = attempts

    @property
    def label(self) -> str:
        """A short, stable label of the failure, for grouping and logs.

        ``"404 not_found"`` (the status and Dify's code), ``"502"`` (a status
        without a Dify code), ``"timeout"``, ``"connection error"``, or the
        class name for anything else.
        """
        return type(self).__name__

    def __str__(self) -> str:
        context = []
        if self.url is not None:
            context.append(f"{self.method} {self.url}")
        if self.attempts > 1:
            context.append(f"after {self.attempts} attempts")
        if not context:
            return self.message
        return f"{self.message} ({', '.join(context)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not pickle on their own; rebuild from
        # state. aiohttp's read-only header view does not pickle: copy it.
        state = self.__dict__.copy()
        headers = state.get("headers")
        if isinstance(headers, CIMultiDictProxy):
            state["headers"] = CIMultiDict(headers)
        return (_rebuild, (type(self), state))


def _printable(text: str) -> str:
    """*text* as a server sent it, with what cannot be printed as ``?``."""
    text = text.encode("utf-8", "replace").decode()
    return "".join(c if c.isprintable() else "?" for c in text)


def _rebuild(cls: type[DifyError], state: dict[str, Any]) -> DifyError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class InvalidRequestError(DifyError, ValueError):
    """The arguments cannot make a valid request; nothing was sent.

    The message names the offending argument.
    """


class ClientClosedError(DifyError, RuntimeError):
    """The client was used after it was closed."""


class EventLoopError(DifyError, RuntimeError):
    """The client was used from an event loop other than its own.

    A client belongs to the event loop its session was made in (a second
    :func:`asyncio.run`, or another thread's loop, is another loop). Make one
    client per event loop.
    """


class APIConnectionError(DifyError):
    """No usable answer came back: DNS failure, refused or reset connection, TLS.

    The underlying exception is chained as ``__cause__``.

    Attributes:
        request_sent: ``False`` when the connection was never established, so
            the server cannot have seen the request; ``True`` when it may have
            (a reset or timeout after sending), in which case the rename may
            have happened.
    """

    def __init__(
        self,
        message: str,
        *,
        request_sent: bool = True,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, method=method, url=url, attempts=attempts)
        self.request_sent = request_sent

    @property
    def label(self) -> str:
        """``"connection error"``."""
        return "connection error"


class APITimeoutError(APIConnectionError):
    """An attempt did not complete within its timeout, or the deadline passed."""

    @property
    def label(self) -> str:
        """``"timeout"``."""
        return "timeout"


class CertificateVerificationError(APIConnectionError):
    """The server's TLS certificate failed verification.

    Never retried: another attempt meets the same certificate. The message
    names the problem (expired, self-signed, wrong host name, ...).
    """


class _ResponseError(DifyError):
    """Shared state of errors built from an HTTP response."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        headers: Mapping[str, str],
        body: object,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, method=method, url=url, attempts=attempts)
        self.status_code = status_code
        self.headers = headers
        self.body = body
        version = headers.get("X-Version")
        self.server_version: str | None = (
            None if version is None else _printable(version)
        )

    def __str__(self) -> str:
        text = super().__str__()
        if self.server_version is not None:
            return f"{text} [Dify {self.server_version}]"
        return text


class APIResponseValidationError(_ResponseError):
    """The server answered 2xx, but the body is not a conversation.

    Never retried. ``body`` holds the decoded JSON, or a short excerpt of the
    text when it was not JSON.
    """


class APIStatusError(_ResponseError):
    """The server answered with a status that is not a success.

    Attributes:
        status_code: The HTTP status.
        code: Dify's error code (``"not_found"``, ``"invalid_param"``, ...) when
            the body is Dify's JSON error, else ``None`` (gateway HTML pages,
            plain text).
        message: Dify's message, or a description of a non-Dify answer.
        headers: The response headers.
        body: The decoded JSON body, or a short excerpt of a non-JSON body.
        server_version: The ``X-Version`` header (Dify's version), or ``None``.
        method: The request method.
        url: The request URL.
        attempts: How many attempts were made.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None,
        headers: Mapping[str, str],
        body: object,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            headers=headers,
            body=body,
            method=method,
            url=url,
            attempts=attempts,
        )
        self.code = code

    @property
    def label(self) -> str:
        """The status and Dify's code (``"404 not_found"``), or the status."""
        if self.code:
            return f"{self.status_code} {self.code}"
        return str(self.status_code)

    def __str__(self) -> str:
        text = super().__str__()
        if self.code is None:
            return text
        if not self.message:
            text = "(empty message)" + text
        return f"{self.status_code} {self.code}: {text}"


class BadRequestError(APIStatusError):
    """400: ``invalid_param``, ``bad_request`` or ``not_chat_app``."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, malformed or unknown."""


class PermissionDeniedError(APIStatusError):
    """403: the app was deleted, is disabled, or its workspace is archived."""


class NotFoundError(APIStatusError):
    """404: no such conversation for this app and this ``user``.

    Also raised for a gateway's HTML 404 (``code`` is then ``None``), which
    usually means the base URL is wrong (for example it lacks ``/v1``).
    """


class MethodNotAllowedError(APIStatusError):
    """405: the route does not take this method."""


class RequestTooLargeError(APIStatusError):
    """413: a proxy in front of Dify refused the body as too large."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: the request's Content-Type was not JSON."""


class RateLimitError(APIStatusError):
    """429: too many requests."""

    @functools.cached_property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait, or ``None``.

        Read from ``Retry-After`` or ``retry-after-ms``; the server's value
        even when it is above the client's cap; ``None`` when the server gave
        no usable value.
        """
        return parse_retry_after(self.headers)


class InternalServerError(APIStatusError):
    """5xx: an error in Dify or in a gateway in front of it."""
