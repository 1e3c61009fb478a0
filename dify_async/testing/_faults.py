"""The fault model of the fake server: what can go wrong, and when it strikes.

A :class:`Fault` describes one misbehaviour (an arbitrary answer, a gateway's
error page, a rate limit, a dropped connection, a slow answer); a
:class:`FaultQueue` holds the faults queued with
:meth:`~dify_async.testing.FakeDifyServer.inject_fault` and decides which one
strikes a request. Nothing here touches the network.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Literal

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Fault", "FaultKind", "FaultQueue"]

FaultKind = Literal["response", "disconnect", "delay"]
"""What a :class:`Fault` does: send a response, drop the connection, or wait."""

# The titles nginx puts on its own error pages, where they differ from Python's.
_NGINX_PHRASES: Final = {
    408: "Request Time-out",
    413: "Request Entity Too Large",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


@attrs.frozen(kw_only=True)
class Fault:
    """A misbehaviour to inject into the fake server's answer to one request.

    Build faults with the class methods (:meth:`http`, :meth:`gateway`,
    :meth:`rate_limit`, :meth:`disconnect`, :meth:`delay`) and hand them to
    :meth:`FakeDifyServer.inject_fault`.

    With ``after_processing=False`` (the default) the fault replaces the
    request before the application sees it: nothing is renamed and no LLM call
    is made. With ``after_processing=True`` the request is handled in full
    first (the rename is stored, the LLM is paid for) and only then is the
    answer replaced, as when a gateway loses the server's response.

    Attributes:
        kind: ``"response"`` (send :attr:`status`, :attr:`headers` and
            :attr:`body` instead of the real answer), ``"disconnect"`` (close
            the connection without answering) or ``"delay"`` (wait
            :attr:`seconds`, then answer normally).
        status: HTTP status of a ``"response"`` fault, else ``None``.
        body: Body of a ``"response"`` fault.
        headers: Headers of a ``"response"`` fault, content type included.
            No ``X-Version`` or ``X-Env`` header is added to them.
        seconds: How long a ``"delay"`` fault waits.
        after_processing: Whether the request is processed before the fault
            strikes.
    """

    kind: FaultKind
    status: int | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    after_processing: bool = False

    @classmethod
    def http(
        cls,
        status: int,
        body: str | bytes = b"",
        *,
        content_type: str = "text/plain",
        headers: Mapping[str, str] | None = None,
        after_processing: bool = False,
    ) -> Fault:
        """Answer with an arbitrary HTTP response.

        The response is sent exactly as described: the fake adds no
        ``X-Version``/``X-Env`` headers, so include them in *headers* to
        imitate an answer from Dify itself.

        Args:
            status: HTTP status code, 200 to 599.
            body: Response body; text is encoded as UTF-8.
            content_type: Value of the ``Content-Type`` header.
            headers: Further response headers.
            after_processing: Process the request first, then replace its
                answer.

        Returns:
            The fault.

        Raises:
            ValueError: *status* is outside 200 to 599.
        """
        if not 200 <= status <= 599:  # noqa: PLR2004
            raise ValueError(f"status must be between 200 and 599, not {status}")
        raw = body.encode() if isinstance(body, str) else bytes(body)
        pairs = [("Content-Type", content_type), *(headers or {}).items()]
        return cls(
            kind="response",
            status=status,
            body=raw,
            headers=tuple(pairs),
            after_processing=after_processing,
        )

    @classmethod
    def gateway(cls, status: int = 502, *, after_processing: bool = False) -> Fault:
        """Answer like an nginx reverse proxy whose upstream failed.

        The body is nginx's HTML error page (``<title>502 Bad Gateway</title>``
        and so on), the content type ``text/html``, and there is no
        ``X-Version`` header since Dify never saw or never answered the
        request.

        Args:
            status: HTTP status code, typically 502, 503 or 504 (413 for a
                body too large).
            after_processing: Process the request first, then replace its
                answer (a 504 after the upstream did the work).

        Returns:
            The fault.

        Raises:
            ValueError: *status* is not a known HTTP error status.
        """
        if status < 400:  # noqa: PLR2004
            raise ValueError(f"a gateway error status is 400 or more, not {status}")
        phrase = _NGINX_PHRASES.get(status) or HTTPStatus(status).phrase
        title = f"{status} {phrase}"
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n"
            "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        )
        return cls(
            kind="response",
            status=status,
            body=page.encode(),
            headers=(("Content-Type", "text/html"), ("Server", "nginx")),
            after_processing=after_processing,
        )

    @classmethod
    def rate_limit(
        cls, *, retry_after: str | None = None, retry_after_ms: str | None = None
    ) -> Fault:
        """Answer 429 like an API gateway's rate limiter.

        The body is a small JSON object without Dify's ``code``
        (``{"message": "API rate limit exceeded"}``) and there is no
        ``X-Version`` header. The request never reaches the application.

        Args:
            retry_after: Value of the ``Retry-After`` header (seconds or an
                HTTP date), or ``None`` to send none.
            retry_after_ms: Value of the ``retry-after-ms`` header, or
                ``None`` to send none.

        Returns:
            The fault.
        """
        pairs = [("Content-Type", "application/json")]
        if retry_after is not None:
            pairs.append(("Retry-After", retry_after))
        if retry_after_ms is not None:
            pairs.append(("retry-after-ms", retry_after_ms))
        return cls(
            kind="response",
            status=int(HTTPStatus.TOO_MANY_REQUESTS),
            body=b'{"message": "API rate limit exceeded"}',
            headers=tuple(pairs),
        )

    @classmethod
    def disconnect(cls, *, after_processing: bool = False) -> Fault:
        """Close the TCP connection without sending any response.

        Args:
            after_processing: Process the request first (the rename is stored),
                then drop the connection instead of answering.

        Returns:
            The fault.
        """
        return cls(kind="disconnect", after_processing=after_processing)

    @classmethod
    def delay(cls, seconds: float, *, after_processing: bool = False) -> Fault:
        """Wait, then answer normally.

        Args:
            seconds: How long to wait; handy to trigger client timeouts.
            after_processing: Wait after the rename is stored instead of
                before the request is processed.

        Returns:
            The fault.

        Raises:
            ValueError: *seconds* is negative.
        """
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, not {seconds}")
        return cls(kind="delay", seconds=seconds, after_processing=after_processing)


@attrs.define
class _QueuedFault:
    fault: Fault
    remaining: int
    conversation_id: str | None


class FaultQueue:
    """The faults waiting to strike, in the order they were queued.

    Not thread-safe on its own: the server calls it with its lock held.
    """

    def __init__(self) -> None:
        self._queued: list[_QueuedFault] = []

    def __bool__(self) -> bool:
        """Whether any fault is still queued."""
        return bool(self._queued)

    def __len__(self) -> int:
        """How many queued entries are left (each may strike several times)."""
        return len(self._queued)

    def add(self, fault: Fault, *, times: int, conversation_id: str | None) -> None:
        """Queue *fault* for the next *times* requests.

        Args:
            fault: The misbehaviour.
            times: How many requests it strikes, at least 1.
            conversation_id: Only strike requests for this (canonical) id, or
                any request when ``None``.

        Raises:
            ValueError: *times* is less than 1.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        self._queued.append(_QueuedFault(fault, times, conversation_id))

    def clear(self) -> None:
        """Drop every queued fault."""
        self._queued.clear()

    def take(self, conversation_id: str) -> Fault | None:
        """Use up one strike of the first fault that matches a request.

        A fault queued for a conversation matches requests for that id only; a
        fault queued without one matches every request.

        Args:
            conversation_id: The canonical id the request addresses.

        Returns:
            The fault that strikes the request, or ``None``.
        """
        # The queue is short: a linear scan is fine.
        for index, queued in enumerate(self._queued):
            if queued.conversation_id in (None, conversation_id):
                queued.remaining -= 1
                if queued.remaining == 0:
                    del self._queued[index]
                return queued.fault
        return None
