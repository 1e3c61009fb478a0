"""What the command line says: output, errors in the CLI's terms, and hints."""

from __future__ import annotations

import re
import sys
from typing import Any, Final

from dify_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CertificateVerificationError,
    DifyError,
)

__all__ = [
    "UsageError",
    "describe",
    "error_record",
    "hint",
    "in_cli_terms",
    "os_reason",
    "say",
    "warn",
]

# The client's parameters that the command line sets, by option. Each is
# replaced where it appears as a name in a message, and ``timeout`` (an English
# word as well) only where a message starts with it.
_OPTIONS: Final = {
    "api_key": "--api-key",
    "base_url": "--base-url",
    "max_retries": "--max-retries",
    "max_rate": "--rate",
    "connection_limit": "--concurrency",
    "concurrency": "--concurrency",
    "timeout": "--timeout",
}
_PARAMETER: Final = re.compile(
    r"\b(api_key|base_url|max_retries|max_rate|connection_limit)\b=?"
    r"|^(timeout|concurrency)\b"
)
_TLS_TROUBLE: Final = re.compile(r"ssl|tls|wrong version", re.IGNORECASE)


class UsageError(Exception):
    """A problem with the command line, its input or its environment.

    It is found before anything is sent, and shown as one line (exit status
    2).
    """


def say(text: str = "") -> None:
    """Print a line on standard output.

    Args:
        text: The line, without its end.
    """
    sys.stdout.write(text + "\n")


def warn(text: str) -> None:
    """Print a line on standard error at once.

    Args:
        text: The line, without its end.
    """
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def in_cli_terms(text: str) -> str:
    """Name the command line's options where a message names the client's.

    Args:
        text: A message of the library, such as ``"api_key is empty: pass
            api_key= or set DIFY_API_KEY"``.

    Returns:
        The message with the options instead (``"--api-key is empty: pass
        --api-key or set DIFY_API_KEY"``).
    """
    return _PARAMETER.sub(lambda match: _OPTIONS[match[1] or match[2]], text)


def describe(error: DifyError) -> str:
    """Say what a rename ended with, in one line.

    Args:
        error: The error.

    Returns:
        Its label, message, and the number of attempts when there were more
        than one.
    """
    text = f"{error.label}: {in_cli_terms(error.message) or '(no message)'}"
    if error.attempts > 1:
        text += f" (after {error.attempts} attempts)"
    return text


def error_record(error: DifyError) -> dict[str, Any]:
    """Describe an error for a JSON record.

    Args:
        error: The error.

    Returns:
        Its class name, HTTP status, Dify code and message (``None`` where
        they do not apply).
    """
    if isinstance(error, APIStatusError):
        status, code = error.status_code, error.code
    else:
        status, code = None, None
    return {
        "error": type(error).__name__,
        "status": status,
        "code": code,
        "message": error.message,
    }


def hint(error: DifyError, base_url: str) -> str | None:
    """Suggest what to fix after an error, when the error says it.

    Args:
        error: The error.
        base_url: The base URL the client used.

    Returns:
        The hint, or ``None``.
    """
    if isinstance(error, AuthenticationError):
        return (
            "the server refused the API key: check --api-key or DIFY_API_KEY "
            "(the key of the app, from its API Access page)"
        )
    plain = (
        isinstance(error, APIConnectionError)
        and not isinstance(error, APITimeoutError | CertificateVerificationError)
        and base_url.startswith("https://")
        and _TLS_TROUBLE.search(error.message) is not None
    )
    if plain:
        http = "http://" + base_url.removeprefix("https://")
        return f"is the server plain HTTP? try --base-url {http}"
    return None


def os_reason(error: OSError) -> str:
    """Say why a file operation failed, without a Python class name.

    Args:
        error: The error.

    Returns:
        The operating system's words (``"No such file or directory"``).
    """
    return error.strerror or str(error) or type(error).__name__
