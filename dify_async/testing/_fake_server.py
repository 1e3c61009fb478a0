"""An in-process fake of the Dify Service API call that renames a conversation.

:class:`FakeDifyServer` answers ``POST /v1/conversations/{id}/name`` the way a
real Dify 1.x server does: the same checks in the same order, the same status
codes, error codes and headers, the same quirks (an empty message for
``auto_generate`` without messages, a 500 for names over 255 characters, an
HTML page for ids that are not UUIDs). On top of that it can misbehave on
purpose, like the gateways in front of real servers do: see :class:`Fault`.

It runs on the caller's event loop (``async with FakeDifyServer() as server``)
or in a background thread with its own loop (``with FakeDifyServer() as
server``), and every method that reads or seeds state may be called from any
thread.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import re
import secrets
import string
import threading
import time
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["FakeDifyServer", "Fault", "StoredConversation"]

DEFAULT_USER: Final = "DEFAULT-USER"
"""The end user Dify picks when a request names none."""

_NAME_MAX_LENGTH: Final = 255
_TITLE_MAX_LENGTH: Final = 75
_SHUTDOWN_GRACE: Final = 5.0
_LISTEN_BACKLOG: Final = 4096
_KEY_ALPHABET: Final = string.ascii_letters + string.digits
_KEY_LENGTH: Final = 24

# Werkzeug's UUID converter: 8-4-4-4-12 hex digits, either case, nothing else.
_RENAME_PATH: Final = re.compile(
    r"/v1/conversations/"
    r"([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})"
    r"/name"
).fullmatch

_NOT_FOUND_PAGE: Final = (
    b"<!doctype html>\n"
    b"<html lang=en>\n"
    b"<title>404 Not Found</title>\n"
    b"<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server. If you entered the URL "
    b"manually please check your spelling and try again.</p>\n"
)

_MSG_NO_BEARER: Final = "Authorization header must be provided and start with 'Bearer'"
_MSG_BAD_SCHEME: Final = "Authorization scheme must be 'Bearer'"
_MSG_BAD_TOKEN: Final = "Access token is invalid"  # noqa: S105
_MSG_API_DISABLED: Final = "The app's API service has been disabled."
_MSG_NOT_JSON: Final = (
    "Did not attempt to load JSON data because the request Content-Type "
    "was not 'application/json'."
)
_MSG_EMPTY_JSON: Final = "Invalid JSON payload received or JSON payload is empty."
_MSG_NOT_CHAT_APP: Final = "Please check if your app mode matches the right API route."
_MSG_NOT_FOUND: Final = "Conversation Not Exists."
_MSG_NOT_ALLOWED: Final = "The method is not allowed for the requested URL."
_MSG_INTERNAL: Final = "Internal Server Error"

# pydantic's lax booleans (compared case-insensitively).
_TRUE_STRINGS: Final = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_STRINGS: Final = frozenset({"0", "off", "f", "false", "n", "no"})
_PAYLOAD_MODEL: Final = "ConversationRenamePayload"
_PYDANTIC_DOCS: Final = "https://errors.pydantic.dev/2.11/v/"

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
class _App:
    chat: bool
    api_enabled: bool


@attrs.define
class _QueuedFault:
    fault: Fault
    remaining: int
    conversation_id: str | None


@attrs.frozen
class _RenameArgs:
    name: str | None
    auto_generate: bool
    user: str


class _ServerStoppingError(Exception):
    """Raised inside a waiting handler when the server stops."""


class FakeDifyServer:
    """A fake Dify server that renames conversations like the real one.

    Start it with ``async with`` (it then serves on the running event loop),
    with :meth:`start`/:meth:`stop`, or from a background thread with a plain
    ``with`` block or :meth:`start_in_thread`/:meth:`stop_thread`. Seed it
    with :meth:`add_conversation`, point a client at :attr:`base_url` with
    :attr:`api_key`, and read results back with :meth:`get_conversation` and
    the statistics.

    Args:
        host: Interface to listen on.
        port: TCP port; ``0`` picks a free one.
        version: Value of the ``X-Version`` header on every answer.
        env: Value of the ``X-Env`` header on every answer.
        latency: Seconds each rename request waits before the application
            handles it (a request that a fault refuses first does not wait).

    Attributes:
        api_key: Key of a chat app: the key to rename conversations with.
        workflow_api_key: Key of a workflow app: renames answer 400
            ``not_chat_app``.
        disabled_api_key: Key of an app whose API access is disabled: renames
            answer 403 ``forbidden``.
        latency: The same as the argument; may be changed while the server
            runs.
        llm_fails: When true, the LLM call behind ``auto_generate`` fails: the
            name stays as it was and the answer is still 200, as in Dify.

    Example::

        async with FakeDifyServer() as server:
            cid = server.add_conversation(user="u-1", messages=["Hi there"])
            ...  # rename through server.base_url with server.api_key
            assert server.get_conversation(cid).name == "Trip plans"
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "1.9.2",
        env: str = "PRODUCTION",
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must not be negative, not {latency}")
        self._host = host
        self._port = port
        self._version = version
        self._env = env
        self._app_headers: Final = {"X-Version": version, "X-Env": env}
        self.latency = latency
        self.llm_fails = False
        self.api_key = _new_key()
        self.workflow_api_key = _new_key()
        self.disabled_api_key = _new_key()
        self._apps: Final = {
            self.api_key: _App(chat=True, api_enabled=True),
            self.workflow_api_key: _App(chat=False, api_enabled=True),
            self.disabled_api_key: _App(chat=True, api_enabled=False),
        }

        self._lock = threading.Lock()
        self._conversations: dict[str, StoredConversation] = {}
        self._faults: list[_QueuedFault] = []
        self._requests_received = 0
        self._renames_applied = 0
        self._llm_calls = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._requests_by_conversation: collections.Counter[str] = collections.Counter()

        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._stopping = False
        self._sleepers: set[asyncio.Future[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._thread_failure: list[BaseException] = []

    # -- configuration -------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The base URL to give a client, like ``http://127.0.0.1:PORT/v1``.

        Raises:
            RuntimeError: The server is not running.
        """
        port = self._bound_port
        if port is None:
            raise RuntimeError("The fake Dify server is not running; start it first.")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}/v1"

    @property
    def version(self) -> str:
        """The ``X-Version`` header the server sends."""
        return self._version

    @property
    def env(self) -> str:
        """The ``X-Env`` header the server sends."""
        return self._env

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start serving on the running event loop.

        Raises:
            RuntimeError: The server is already running.
            OSError: The address cannot be bound.
        """
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("The fake Dify server is already running.")
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._stopping = False
        self._runner = runner
        self._bound_port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving and close every connection; harmless when stopped.

        Requests still waiting on a :meth:`Fault.delay` or on :attr:`latency`
        are dropped without an answer.

        Raises:
            RuntimeError: The server was started with :meth:`start_in_thread`
                and this is another thread: use :meth:`stop_thread`.
        """
        runner = self._runner
        if runner is None:
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            raise RuntimeError("Stop a server started in a thread with stop_thread().")
        self._runner = None
        self._bound_port = None
        self._stopping = True
        for waiter in self._sleepers:
            if not waiter.done():
                waiter.set_exception(_ServerStoppingError())
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Start serving from a daemon thread that runs its own event loop.

        Returns once the server accepts connections, so that it can be used
        from synchronous code and from any async framework alike.

        Raises:
            RuntimeError: The server is already running.
            OSError: The address cannot be bound.
        """
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("The fake Dify server is already running.")
        ready = threading.Event()
        self._thread_failure = []
        thread = threading.Thread(
            target=self._thread_main,
            args=(ready,),
            name="FakeDifyServer",
            daemon=True,
        )
        thread.start()
        ready.wait()
        if self._thread_failure:
            thread.join()
            raise self._thread_failure.pop()
        self._thread = thread

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`; harmless twice."""
        thread, stopper = self._thread, self._thread_stop
        if thread is None or stopper is None:
            return
        loop, stop_requested = stopper
        if thread.is_alive():
            loop.call_soon_threadsafe(stop_requested.set)
        thread.join()
        self._thread = None
        self._thread_stop = None
        if self._thread_failure:
            raise self._thread_failure.pop()

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve_until_stopped(ready))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller)
            self._thread_failure.append(exc)
        finally:
            ready.set()

    async def _serve_until_stopped(self, ready: threading.Event) -> None:
        stop_requested = asyncio.Event()
        self._thread_stop = (asyncio.get_running_loop(), stop_requested)
        await self.start()
        ready.set()
        try:
            await stop_requested.wait()
        finally:
            await self.stop()

    # -- seeding and reading state -------------------------------------------

    def add_conversation(
        self,
        *,
        user: str,
        name: str = "New conversation",
        inputs: Mapping[str, Any] | None = None,
        messages: Sequence[str] = (),
        introduction: str | None = "",
        status: str = "normal",
        conversation_id: str | None = None,
        created_at: int | None = None,
    ) -> str:
        """Store a conversation of the chat app and return its id.

        Args:
            user: The end user it belongs to; requests must name the same
                ``user`` to reach it (use ``"DEFAULT-USER"`` for requests that
                name none).
            name: Its current name.
            inputs: Its input variables (copied).
            messages: The queries of its messages, oldest first;
                ``auto_generate`` titles it from the first one and refuses a
                conversation without any.
            introduction: The app's opening statement, or ``None``.
            status: Its status string.
            conversation_id: Its id; any spelling :class:`uuid.UUID` accepts,
                stored in lower case. A new random id when ``None``.
            created_at: Creation time in unix seconds; now when ``None``. It
                is also the initial ``updated_at``.

        Returns:
            The conversation id, a lower-case UUID string.

        Raises:
            ValueError: *user* is empty, *conversation_id* is not a UUID or is
                already taken.
            TypeError: *messages* is a single string, or *inputs* cannot be
                sent as JSON.
        """
        if not user:
            raise ValueError("user must not be empty; Dify uses 'DEFAULT-USER'")
        if isinstance(messages, str):
            raise TypeError("messages must be a sequence of strings, not a string")
        cid = (
            str(uuid.uuid4())
            if conversation_id is None
            else _canonical_id(conversation_id)
        )
        stored_inputs = copy.deepcopy(dict(inputs or {}))
        try:
            json.dumps(stored_inputs)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"inputs must be JSON-serialisable: {exc}") from None
        stamp = int(time.time()) if created_at is None else created_at
        conversation = StoredConversation(
            id=cid,
            user=user,
            name=name,
            inputs=stored_inputs,
            status=status,
            introduction=introduction,
            created_at=stamp,
            updated_at=stamp,
            messages=tuple(messages),
        )
        with self._lock:
            if cid in self._conversations:
                raise ValueError(f"conversation {cid} already exists")
            self._conversations[cid] = conversation
        return cid

    def get_conversation(self, conversation_id: str) -> StoredConversation:
        """Return a snapshot of a stored conversation.

        Args:
            conversation_id: The id, in any spelling :class:`uuid.UUID`
                accepts.

        Returns:
            A copy: later renames do not change it, and changing it does not
            change the server.

        Raises:
            KeyError: No such conversation (or it was deleted).
        """
        try:
            cid = _canonical_id(conversation_id)
        except ValueError:
            raise KeyError(conversation_id) from None
        with self._lock:
            conversation = self._conversations[cid]
        return conversation._snapshot()  # noqa: SLF001

    def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation, as Dify's delete call does; renames then 404.

        Args:
            conversation_id: The id, in any spelling :class:`uuid.UUID`
                accepts.

        Raises:
            KeyError: No such conversation.
        """
        try:
            cid = _canonical_id(conversation_id)
        except ValueError:
            raise KeyError(conversation_id) from None
        with self._lock:
            del self._conversations[cid]

    @property
    def conversations(self) -> list[StoredConversation]:
        """Snapshots of every stored conversation, oldest first."""
        with self._lock:
            stored = list(self._conversations.values())
        return [conversation._snapshot() for conversation in stored]  # noqa: SLF001

    # -- faults --------------------------------------------------------------

    def inject_fault(
        self, fault: Fault, *, times: int = 1, conversation_id: str | None = None
    ) -> None:
        """Queue a fault for the next rename requests.

        Each rename request (a POST on the rename route) takes the first queued
        fault that matches its conversation id, or any queued fault when that
        fault was queued without one. A fault is used up after *times*
        requests.

        Args:
            fault: What to do instead of (or besides) answering normally.
            times: How many requests the fault strikes.
            conversation_id: Only strike requests for this conversation.

        Raises:
            ValueError: *times* is less than 1 or *conversation_id* is not a
                UUID.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        cid = None if conversation_id is None else _canonical_id(conversation_id)
        with self._lock:
            self._faults.append(_QueuedFault(fault, times, cid))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, conversation_id: str) -> Fault | None:
        # Called with the lock held. The queue is short: a linear scan is fine.
        for index, queued in enumerate(self._faults):
            if queued.conversation_id in (None, conversation_id):
                queued.remaining -= 1
                if queued.remaining == 0:
                    del self._faults[index]
                return queued.fault
        return None

    # -- statistics ----------------------------------------------------------

    @property
    def requests_received(self) -> int:
        """POST requests that reached the rename route, faulted ones included."""
        return self._requests_received

    @property
    def renames_applied(self) -> int:
        """Renames stored, manual or generated."""
        return self._renames_applied

    @property
    def llm_calls(self) -> int:
        """LLM calls made for ``auto_generate`` (each one costs tokens)."""
        return self._llm_calls

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same time.

        A request that does not wait is handled in one go, so give the server
        some :attr:`latency` to observe how many requests a client keeps open.
        """
        return self._max_in_flight

    @property
    def requests_by_conversation(self) -> collections.Counter[str]:
        """A copy of the number of rename requests per conversation id."""
        with self._lock:
            return collections.Counter(self._requests_by_conversation)

    def reset_stats(self) -> None:
        """Set every statistic back to zero."""
        with self._lock:
            self._requests_received = 0
            self._renames_applied = 0
            self._llm_calls = 0
            self._max_in_flight = self._in_flight
            self._requests_by_conversation.clear()

    # -- request handling ----------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            match = _RENAME_PATH(request.path)
            if match is None:
                return web.Response(
                    status=404,
                    body=_NOT_FOUND_PAGE,
                    content_type="text/html",
                    charset="utf-8",
                    headers=self._app_headers,
                )
            if request.method != "POST":
                return self._error(
                    405, "method_not_allowed", _MSG_NOT_ALLOWED, {"Allow": "POST"}
                )
            return await self._rename_route(request, match[1].lower())
        except _ServerStoppingError:
            return _drop_connection(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _rename_route(
        self, request: web.Request, conversation_id: str
    ) -> web.StreamResponse:
        with self._lock:
            self._requests_received += 1
            self._requests_by_conversation[conversation_id] += 1
            fault = self._take_fault(conversation_id) if self._faults else None
        if fault is not None and not fault.after_processing:
            if fault.kind != "delay":
                return _fault_response(request, fault)
            await self._sleep(fault.seconds)
        if self.latency > 0:
            await self._sleep(self.latency)
        response = await self._rename(request, conversation_id)
        if fault is not None and fault.after_processing:
            if fault.kind != "delay":
                return _fault_response(request, fault)
            await self._sleep(fault.seconds)
        return response

    async def _rename(  # noqa: PLR0911  (one return per check, as in Dify)
        self, request: web.Request, conversation_id: str
    ) -> web.Response:
        # The checks run in Dify's order: token, app, JSON body, app mode,
        # payload, conversation.
        token, refusal = _authorization_token(request.headers.get("Authorization"))
        app = None if token is None else self._apps.get(token)
        if app is None:
            return self._error(
                401, "unauthorized", refusal, {"WWW-Authenticate": 'Bearer realm="api"'}
            )
        if not app.api_enabled:
            return self._error(403, "forbidden", _MSG_API_DISABLED)
        if not _is_json(request.headers.get("Content-Type", "")):
            return self._error(415, "unsupported_media_type", _MSG_NOT_JSON)
        try:
            payload = json.loads(await request.read())
        except ValueError as exc:
            text = f"Failed to decode JSON object: {exc}"
            if text.endswith("Expecting value: line 1 column 1 (char 0)"):
                text = _MSG_EMPTY_JSON
            return self._error(400, "bad_request", text)
        if not app.chat:
            return self._error(400, "not_chat_app", _MSG_NOT_CHAT_APP)
        args = _parse_payload(payload)
        if isinstance(args, str):
            return self._error(400, "invalid_param", args)
        now = int(time.time())
        with self._lock:
            outcome = self._apply(conversation_id, args, now)
        if isinstance(outcome, StoredConversation):
            return self._json(200, _conversation_body(outcome))
        return self._error(*outcome)

    def _apply(
        self, conversation_id: str, args: _RenameArgs, now: int
    ) -> StoredConversation | tuple[int, str, str]:
        # Called with the lock held: constant time, no I/O.
        conversation = self._conversations.get(conversation_id)
        if conversation is None or conversation.user != args.user:
            return (404, "not_found", _MSG_NOT_FOUND)
        if args.auto_generate:
            if not conversation.messages:
                return (400, "invalid_param", "")
            self._llm_calls += 1
            if self.llm_fails:
                return conversation
            updated = attrs.evolve(
                conversation,
                name=_generated_title(conversation.messages[0]),
                rename_count=conversation.rename_count + 1,
            )
        else:
            name = args.name or ""
            if len(name) > _NAME_MAX_LENGTH:
                return (500, "unknown", _MSG_INTERNAL)
            updated = attrs.evolve(
                conversation,
                name=name,
                updated_at=now,
                rename_count=conversation.rename_count + 1,
            )
        self._conversations[conversation_id] = updated
        self._renames_applied += 1
        return updated

    async def _sleep(self, seconds: float) -> None:
        # A wait that stop() can cut short, so that stopping never hangs on a
        # long delay fault whose client has gone away.
        if self._stopping:
            raise _ServerStoppingError
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        self._sleepers.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._sleepers.discard(waiter)

    def _json(
        self, status: int, body: object, extra: Mapping[str, str] | None = None
    ) -> web.Response:
        headers = self._app_headers if extra is None else {**self._app_headers, **extra}
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = {"code": code, "message": message, "status": status}
        return self._json(status, body, extra)


def _new_key() -> str:
    return "app-" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))


def _canonical_id(value: str) -> str:
    return str(uuid.UUID(str(value)))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _drop_connection(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp cannot send this on a closed transport and drops it quietly.
    return web.Response()


def _fault_response(request: web.Request, fault: Fault) -> web.Response:
    if fault.kind == "disconnect" or fault.status is None:
        return _drop_connection(request)
    response = web.Response(status=fault.status, body=fault.body)
    for key, value in fault.headers:
        response.headers[key] = value
    return response


def _authorization_token(header: str | None) -> tuple[str | None, str]:
    """Split an Authorization header like Dify: the token, or why it is refused."""
    if header is None or " " not in header:
        return None, _MSG_NO_BEARER
    parts = header.split(None, 1)
    if len(parts) != 2:  # noqa: PLR2004
        return None, _MSG_NO_BEARER
    if parts[0].lower() != "bearer":
        return None, _MSG_BAD_SCHEME
    return parts[1], _MSG_BAD_TOKEN


def _is_json(content_type: str) -> bool:
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _lax_bool(value: object) -> bool | None:
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


def _parse_payload(payload: object) -> _RenameArgs | str:
    """Validate a request body like Dify's pydantic model; a str is an error."""
    if not isinstance(payload, dict):
        if payload:
            return _validation_message(
                [
                    (
                        None,
                        (
                            "Input should be a valid dictionary or instance of "
                            f"{_PAYLOAD_MODEL}"
                        ),
                        "model_type",
                        payload,
                    )
                ]
            )
        payload = {}
    errors: list[tuple[str | None, str, str, object]] = []
    name = payload.get("name")
    if name is not None and not isinstance(name, str):
        errors.append(("name", "Input should be a valid string", "string_type", name))
    raw_auto = payload.get("auto_generate", False)
    auto_generate = _lax_bool(raw_auto)
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
    user = payload.get("user") or DEFAULT_USER
    if not isinstance(user, str):
        errors.append(("user", "Input should be a valid string", "string_type", user))
    if errors:
        return _validation_message(errors)
    if not auto_generate and (name is None or not name.strip()):
        return _validation_message(
            [
                (
                    None,
                    "Value error, name is required when auto_generate is false",
                    "value_error",
                    payload,
                )
            ]
        )
    return _RenameArgs(name=name, auto_generate=bool(auto_generate), user=user)


def _validation_message(errors: Sequence[tuple[str | None, str, str, object]]) -> str:
    count = len(errors)
    lines = [
        f"{count} validation error{'' if count == 1 else 's'} for {_PAYLOAD_MODEL}"
    ]
    for location, message, kind, value in errors:
        if location is not None:
            lines.append(location)
        shown = repr(value)
        if len(shown) > 50:  # noqa: PLR2004
            shown = f"{shown[:25]}...{shown[-24:]}"
        lines.append(
            f"  {message} [type={kind}, input_value={shown}, "
            f"input_type={type(value).__name__}]"
        )
        lines.append(f"    For further information visit {_PYDANTIC_DOCS}{kind}")
    return "\n".join(lines)


def _generated_title(first_message: str) -> str:
    # Stands in for the LLM: the first query, cut like Dify cuts the answer.
    title = first_message.strip()
    if len(title) > _TITLE_MAX_LENGTH:
        title = title[:_TITLE_MAX_LENGTH] + "..."
    return title


def _conversation_body(conversation: StoredConversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "name": conversation.name,
        "inputs": conversation.inputs,
        "status": conversation.status,
        "introduction": conversation.introduction,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }
