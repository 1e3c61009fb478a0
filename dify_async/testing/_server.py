"""An in-process fake of the Dify Service API call that renames a conversation.

:class:`FakeDifyServer` answers ``POST /v1/conversations/{id}/name`` the way a
real Dify 1.x server does, and misbehaves on purpose when asked to. This
module is the HTTP side: the aiohttp.web application and its one route, the
server's lifecycle on the caller's event loop or in a background thread
(``_thread``), and the public face of its state and statistics (``_state``).
Dify's rules themselves are pure functions in ``_rules``; the fault model is
in ``_faults``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import string
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ._faults import Fault
from ._rules import (
    NOT_FOUND_PAGE,
    App,
    AppError,
    StoredConversation,
    app_for_token,
    conversation_body,
    conversation_id_from_path,
    decode_json,
    method_not_allowed,
    parse_payload,
    require_chat_app,
    require_json_content_type,
    require_object,
)
from ._state import ServerState
from ._thread import LoopThread

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["FakeDifyServer"]

_SHUTDOWN_GRACE: Final = 5.0
_LISTEN_BACKLOG: Final = 4096
_KEY_ALPHABET: Final = string.ascii_letters + string.digits
_KEY_LENGTH: Final = 24


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
            self.api_key: App(chat=True, api_enabled=True),
            self.workflow_api_key: App(chat=False, api_enabled=True),
            self.disabled_api_key: App(chat=True, api_enabled=False),
        }
        self._state = ServerState()

        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._stopping = False
        self._sleepers: set[asyncio.Future[None]] = set()
        self._thread: LoopThread | None = None

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
        if thread is not None and not thread.is_current():
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
        thread = LoopThread("FakeDifyServer", self.start, self.stop)
        thread.run()
        self._thread = thread

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`; harmless twice."""
        thread = self._thread
        if thread is None:
            return
        try:
            thread.stop()
        finally:
            self._thread = None

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
        return self._state.add_conversation(
            user=user,
            name=name,
            inputs=inputs,
            messages=messages,
            introduction=introduction,
            status=status,
            conversation_id=conversation_id,
            created_at=created_at,
        )

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
        return self._state.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation, as Dify's delete call does; renames then 404.

        Args:
            conversation_id: The id, in any spelling :class:`uuid.UUID`
                accepts.

        Raises:
            KeyError: No such conversation.
        """
        self._state.delete_conversation(conversation_id)

    @property
    def conversations(self) -> list[StoredConversation]:
        """Snapshots of every stored conversation, oldest first."""
        return self._state.conversations()

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
        self._state.inject_fault(fault, times=times, conversation_id=conversation_id)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._state.clear_faults()

    # -- statistics ----------------------------------------------------------

    @property
    def requests_received(self) -> int:
        """POST requests that reached the rename route, faulted ones included."""
        return self._state.requests_received

    @property
    def renames_applied(self) -> int:
        """Renames stored, manual or generated."""
        return self._state.renames_applied

    @property
    def llm_calls(self) -> int:
        """LLM calls made for ``auto_generate`` (each one costs tokens)."""
        return self._state.llm_calls

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same time.

        A request that does not wait is handled in one go, so give the server
        some :attr:`latency` to observe how many requests a client keeps open.
        """
        return self._state.max_in_flight

    @property
    def requests_by_conversation(self) -> collections.Counter[str]:
        """A copy of the number of rename requests per conversation id."""
        return self._state.requests_by_conversation()

    def reset_stats(self) -> None:
        """Set every statistic back to zero."""
        self._state.reset_stats()

    # -- request handling ----------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._state.enter()
        try:
            conversation_id = conversation_id_from_path(request.path)
            if conversation_id is None:
                return web.Response(
                    status=404,
                    body=NOT_FOUND_PAGE,
                    content_type="text/html",
                    charset="utf-8",
                    headers=self._app_headers,
                )
            if request.method != "POST":
                return self._error(method_not_allowed())
            return await self._rename_route(request, conversation_id)
        except (_ServerStoppingError, ConnectionError):
            # The server is stopping, or the client went away mid-request
            # (aiohttp raises ConnectionResetError when the body is read):
            # end quietly, without an answer and without an error log.
            return _drop_connection(request)
        finally:
            self._state.leave()

    async def _rename_route(
        self, request: web.Request, conversation_id: str
    ) -> web.StreamResponse:
        fault = self._state.receive(conversation_id)
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

    async def _rename(self, request: web.Request, conversation_id: str) -> web.Response:
        # The checks run in Dify's order: token and app, JSON body, the body's
        # user, app mode, payload, conversation.
        try:
            app = app_for_token(request.headers.get("Authorization"), self._apps)
            require_json_content_type(request.headers.get("Content-Type", ""))
            payload = require_object(decode_json(await request.read()))
            require_chat_app(app)
            args = parse_payload(payload)
            renamed = self._state.rename(
                conversation_id, args, llm_fails=self.llm_fails
            )
        except AppError as error:
            return self._error(error)
        return self._json(200, conversation_body(renamed))

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
        headers = self._app_headers if not extra else {**self._app_headers, **extra}
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )

    def _error(self, error: AppError) -> web.Response:
        return self._json(error.status, error.body(), error.headers)


def _new_key() -> str:
    return "app-" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))


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
