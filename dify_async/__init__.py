"""An async-first, typed client for renaming Dify conversations.

::

    from dify_async import AsyncDifyClient

    async with AsyncDifyClient(api_key="app-...") as client:
        conversation = await client.rename_conversation(
            conversation_id, name="Trip plans", user="user-42"
        )
"""

from ._client import AsyncDifyClient
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CertificateVerificationError,
    ClientClosedError,
    DifyError,
    EventLoopError,
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
from ._retry import RetryEvent
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncDifyClient",
    "AuthenticationError",
    "BadRequestError",
    "CertificateVerificationError",
    "ClientClosedError",
    "Conversation",
    "DifyError",
    "EventLoopError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RenameRequest",
    "RequestTooLargeError",
    "RetryEvent",
    "UnsupportedMediaTypeError",
    "__version__",
]
