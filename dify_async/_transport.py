"""The one module that touches aiohttp at run time.

It owns, for one client:

- the session (made inside the running loop, or borrowed and checked), and
  the event loop the client belongs to;
- sending one attempt: the ``max_rate`` pacer, a connection slot, the
  attempt's timeout clipped to the call's deadline, the request exactly as
  :mod:`._sansio` built it;
- ONE bounded read of the body, counting decoded bytes (so a compressed body
  that inflates past ``max_response_size`` is cut off after the limit plus one
  chunk), for successes and errors alike;
- handing what was read to :func:`._sansio.decode_response`, so that an
  attempt ends in a :class:`Conversation` or a :class:`DifyError` (the retry
  loop sends every later attempt through the same :meth:`Transport.send`);
- ONE place where aiohttp, OS and timeout exceptions become
  :class:`DifyError` instances (:meth:`Transport._translate`), without chaining an
  exception that carries the request's headers.

A rename that may cost an LLM call (``auto_generate``) goes out on a fresh
connection of its own when the session is the client's: a pooled connection
that the server closed while idle could otherwise turn it into an error that
no retry may fix (see ``docs/retries.md``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import platform
import ssl
import sys
from typing import Final

import aiohttp

from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    CertificateVerificationError,
    ClientClosedError,
    DifyError,
    EventLoopError,
    InvalidRequestError,
)
from ._models import Conversation
from ._pacing import Pacer, unless_set
from ._sansio import REDACTED, PreparedRequest, decode_response
from ._validation import check_seconds
from ._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "Transport", "to_timeout"]

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=60.0, sock_connect=10.0)
"""Per attempt: 60 s in all (Dify Cloud's gateway cuts blocking calls near
60 s, so waiting longer gains nothing), 10 s to connect."""

USER_AGENT: Final = (
    f"dify-async/{__version__} aiohttp/{aiohttp.__version__} "
    f"Python/{platform.python_version()}"
)
"""The library's ``User-Agent`` token."""

logger: Final = logging.getLogger("dify_async")

_PLAIN_HTTP_HINTS: Final = ("wrong version number", "record layer failure")
_CONNECT_MARGIN: Final = 0.05  # seconds: see _clip


def to_timeout(value: object) -> aiohttp.ClientTimeout:
    """Return a per-attempt timeout from seconds or an ``aiohttp.ClientTimeout``.

    Seconds bound the whole attempt, and connecting to 10 s at most.

    Raises:
        InvalidRequestError: *value* is neither.
    """
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    try:
        seconds = check_seconds(value, "timeout")
    except InvalidRequestError:
        raise InvalidRequestError(
            "timeout must be positive seconds or an aiohttp.ClientTimeout, "
            f"got {value!r}"
        ) from None
    assert seconds is not None  # noqa: S101  (allow_none is off)
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 10.0))


def _pool_size(session: aiohttp.ClientSession | None, own_limit: int) -> int:
    """How many connections a session can open at once (``0``: no limit)."""
    if session is None:
        return own_limit
    connector = session.connector
    if connector is None:
        return 0
    # Every request goes to one host, so the per-host limit binds too.
    limits = [n for n in (connector.limit, connector.limit_per_host) if n]
    return min(limits, default=0)


def _check_borrowed(session: object) -> aiohttp.ClientSession:
    """Refuse a session that is not one, or that would send its own key."""
    if not isinstance(session, aiohttp.ClientSession):
        raise InvalidRequestError(
            f"session must be an aiohttp.ClientSession, got {type(session).__name__}"
        )
    if session.auth is not None or "Authorization" in session.headers:
        raise InvalidRequestError(
            "session must not carry its own credentials (auth= or a default "
            "Authorization header): the client sends the API key itself"
        )
    return session


def _clip(timeout: aiohttp.ClientTimeout, remaining: float) -> aiohttp.ClientTimeout:
    """*timeout*, its total cut to *remaining* seconds (never rounded up).

    Connecting is cut shorter, so that a connection (or a TLS handshake)
    still under way when the deadline comes is reported as never sent,
    rather than losing the race to the total's timer. That timer starts
    first, and a pause of the event loop (a garbage collector pass, another
    task) may come before the connect timer starts: the margin is 1% of
    *remaining*, at least 50 ms, at most half of it.
    """
    if timeout.total is not None and timeout.total <= remaining:
        return timeout
    connect = remaining - min(max(remaining * 0.01, _CONNECT_MARGIN), remaining / 2)
    if timeout.connect is not None:
        connect = min(connect, timeout.connect)
    return aiohttp.ClientTimeout(
        total=remaining,
        connect=connect,
        sock_read=timeout.sock_read,
        sock_connect=timeout.sock_connect,
        ceil_threshold=math.inf,  # aiohttp rounds longer timeouts up otherwise
    )


def _os_reason(error: BaseException) -> str:
    """Words for an OS or TLS error, never empty."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.replace("_", " ").lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    if text:
        return text
    if isinstance(error, ConnectionResetError | ssl.SSLEOFError):
        return "the server closed the connection"
    return type(error).__name__


class Transport:
    """Sends attempts through one aiohttp session, and reads their answers.

    Args:
        session: A borrowed session (never closed here), or ``None`` to make
            one inside the running loop at first use.
        connection_limit: Open connections at most, for a session of our own.
        max_rate: Requests per second at most, or ``None``.
        max_response_size: Decoded body bytes read at most.

    Raises:
        InvalidRequestError: the borrowed session carries credentials.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        connection_limit: int,
        max_rate: float | None,
        max_response_size: int,
    ) -> None:
        self._session = None if session is None else _check_borrowed(session)
        self._owns_session = session is None
        self._fresh: aiohttp.ClientSession | None = None
        self._connection_limit = connection_limit
        self._limit = max_response_size
        self._pacer = None if max_rate is None else Pacer(max_rate)
        # One slot per connection the pool can open (no limit: as many as asked).
        self._slots = asyncio.Semaphore(
            _pool_size(session, connection_limit) or sys.maxsize
        )
        # A borrowed session belongs to the loop it was made in.
        self._loop: asyncio.AbstractEventLoop | None = getattr(session, "_loop", None)
        self.closing = asyncio.Event()
        """Set by :meth:`close`; it wakes the waits that end early on closing."""
        user_agent = None if session is None else session.headers.get("User-Agent")
        self.user_agent = USER_AGENT if not user_agent else f"{user_agent} {USER_AGENT}"
        """The ``User-Agent`` to send: a borrowed session's, then ours."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.closing.is_set()

    async def sleep(self, seconds: float) -> None:
        """Wait *seconds*, or less if the transport is closed meanwhile.

        The waits before an attempt (``max_rate``) and between attempts use
        it, so that closing the client ends them at once.
        """
        await unless_set(self.closing, asyncio.sleep(seconds))

    def ensure_usable(self) -> None:
        """Make the session if needed; raise if the transport cannot send.

        Raises:
            ClientClosedError: it (or a borrowed session) is closed.
            EventLoopError: called from another event loop than its own.
        """
        if self.closed:
            raise ClientClosedError("this AsyncDifyClient is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise EventLoopError(
                    "this AsyncDifyClient belongs to another event loop (a "
                    "second asyncio.run, or another thread); make one client "
                    "per event loop"
                )
            self._loop = loop
        if self._session is None:
            # Made here, inside the running loop, never at construction.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connection_limit)
            )
        elif not self._owns_session and self._session.closed:
            # Its owner closed it (ours is closed only by close() above).
            raise ClientClosedError(
                "the aiohttp.ClientSession passed as session= is closed"
            )

    async def close(self) -> None:
        """Close the sessions made here; wake attempts waiting for the pacer."""
        if self.closed:
            return
        self.closing.set()
        if self._owns_session:
            for session in (self._session, self._fresh):
                if session is not None:
                    await session.close()

    async def send(
        self,
        request: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
        deadline_at: float | None,
    ) -> Conversation:
        """Send one attempt, read its answer, and decode it.

        Waiting for the pacer and for a connection slot comes before the
        attempt's clock starts, and within the call's deadline.

        Raises:
            APIConnectionError: no usable answer (APITimeoutError when time
                ran out; ``request_sent=False`` when it never went out).
            ClientClosedError: the client was closed meanwhile.
        """
        if self._pacer is not None:
            await self._wait_for_pacer(request, deadline_at)
        slots = self._slots
        if deadline_at is not None and slots.locked():
            await self._wait_for_slot(slots, request, deadline_at)
        else:
            await slots.acquire()
        try:
            session = self._session_for(request)
            if deadline_at is not None:
                # Cut to what is left of the call's deadline.
                timeout = _clip(timeout, self._remaining(request, deadline_at))
            debug = logger.isEnabledFor(logging.DEBUG)
            if debug:
                logger.debug("%s %s", request.method, request.url)  # as it goes out
            try:
                async with session.request(
                    request.method,
                    request.target,
                    data=request.body,
                    headers=request.headers,
                    allow_redirects=False,
                    raise_for_status=False,
                    timeout=timeout,
                ) as response:
                    status, headers = response.status, response.headers
                    if debug:
                        logger.debug("%s %s -> %d", request.method, request.url, status)
                    body = await self._read(response)
            except asyncio.CancelledError:
                if not self._closed_meanwhile():
                    raise
                error: DifyError = ClientClosedError(
                    "the client was closed while this call was in flight",
                    method=request.method,
                    url=request.url,
                )
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                error = self._translate(exc, request)
            else:
                return decode_response(
                    status,
                    headers,
                    b"" if body is None else body,
                    request=request,
                    complete=body is not None,
                )
            # Raised outside the handler, so that the aiohttp exception is not
            # chained as __context__ (some carry the request's headers).
            raise error
        finally:
            slots.release()

    async def _read(self, response: aiohttp.ClientResponse) -> bytes | None:
        """Read the decoded body, at most the limit plus one chunk.

        Returns:
            The body, or ``None`` past the limit (the rest is never read; the
            connection is dropped).
        """
        limit = self._limit
        declared = response.content_length
        if (
            declared is not None
            and declared > limit
            and response.headers.get("Content-Encoding", "identity") == "identity"
        ):
            return None  # as declared
        content = response.content
        chunks = [await content.readany()]  # most bodies come whole in one chunk
        size = len(chunks[0])
        while size <= limit and not content.at_eof():
            chunk = await content.readany()
            size += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks) if size <= limit else None

    def _session_for(self, request: PreparedRequest) -> aiohttp.ClientSession:
        """The session to send *request* through.

        Raises:
            ClientClosedError: the client closed while the call waited its turn.
        """
        if self.closed:
            raise ClientClosedError(
                "this AsyncDifyClient is closed",
                method=request.method,
                url=request.url,
            )
        session = self._session
        assert session is not None  # noqa: S101  (ensure_usable made it)
        if not request.idempotent and self._owns_session:
            session = self._fresh_session()
        return session

    def _fresh_session(self) -> aiohttp.ClientSession:
        """The session for a request that must not be repeated: a fresh connection.

        A pooled connection may have been closed by the server while idle,
        and a failure on it could then not be retried.
        """
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connection_limit, force_close=True
                )
            )
        return self._fresh

    async def _wait_for_pacer(
        self, request: PreparedRequest, deadline_at: float | None
    ) -> None:
        assert self._pacer is not None  # noqa: S101
        now = asyncio.get_running_loop().time()
        delay = self._pacer.reserve(now, deadline_at)
        if delay is None:
            raise self._too_late(request, "waiting for its turn under max_rate")
        if delay > 0:  # a closed transport ends the wait at once
            await self.sleep(delay)

    async def _wait_for_slot(
        self, slots: asyncio.Semaphore, request: PreparedRequest, deadline_at: float
    ) -> None:
        remaining = self._remaining(request, deadline_at)
        try:
            await asyncio.wait_for(slots.acquire(), remaining)
        except asyncio.TimeoutError:
            error = self._too_late(request, "waiting for a free connection")
        else:
            return
        raise error

    def _remaining(self, request: PreparedRequest, deadline_at: float) -> float:
        remaining = deadline_at - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise self._too_late(request, "before this attempt")
        return remaining

    def _too_late(self, request: PreparedRequest, when: str) -> APITimeoutError:
        return APITimeoutError(
            f"the call's deadline passed {when}; the request was not sent",
            request_sent=False,
            method=request.method,
            url=request.url,
        )

    def _closed_meanwhile(self) -> bool:
        """Whether a cancellation came from closing the client, not a caller."""
        # Closing the session cancels the calls waiting inside aiohttp for a
        # connection, although nobody cancelled their tasks.
        if not self.closed:
            return False
        cancelling = getattr(asyncio.current_task(), "cancelling", None)
        return cancelling is None or cancelling() == 0

    def _translate(self, exc: BaseException, request: PreparedRequest) -> DifyError:
        """The :class:`DifyError` for an exception of aiohttp, the OS or a timer.

        The aiohttp exception becomes the error's ``__cause__``, except one
        that carries the request's headers (``ClientResponseError``).
        """
        method, url = request.method, request.url
        if self.closed:
            return ClientClosedError(
                "the client was closed while this call was in flight",
                method=method,
                url=url,
            )
        cls: type[APIConnectionError] = APIConnectionError
        request_sent = True
        cause: BaseException | None = exc
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            problem = exc.certificate_error
            detail = getattr(problem, "verify_message", None) or _os_reason(problem)
            cls, request_sent = CertificateVerificationError, False
            message = f"the server's TLS certificate failed verification: {detail}"
        elif isinstance(exc, aiohttp.ConnectionTimeoutError):
            cls, request_sent = APITimeoutError, False
            message = "timed out connecting to the server"
        elif isinstance(exc, asyncio.TimeoutError):
            cls, message = APITimeoutError, "the server did not answer in time"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            reason = _os_reason(exc.os_error)
            if isinstance(exc, aiohttp.ClientSSLError):
                reason = f"TLS handshake failed: {reason}"
                if any(hint in reason for hint in _PLAIN_HTTP_HINTS):
                    reason += " (is the server plain HTTP? try http:// in base_url)"
            request_sent = False
            message = f"could not connect: {reason}"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            message = "the server closed the connection without answering"
        elif isinstance(exc, aiohttp.ClientResponseError):
            # Its request_info holds the request's headers: keep only words.
            cause = None
            detail = exc.message or type(exc).__name__
            message = f"the server's answer is not valid HTTP: {detail}"
        else:
            message = f"connection failed: {_os_reason(exc)}"
        error = cls(
            message.replace(request.secret.decode(), REDACTED),
            request_sent=request_sent,
            method=method,
            url=url,
        )
        error.__cause__ = cause
        return error
