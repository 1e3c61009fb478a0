"""Servers on 127.0.0.1 that attack the client on purpose: raw HTTP, TLS, bombs.

:mod:`faulty_servers` covers servers that fail; these ones are hostile. They
answer with compression bombs, JSON nested a hundred thousand levels deep,
numbers with a hundred thousand digits, bytes that are not UTF-8 in headers,
statuses past 599, the client's own Authorization header echoed back, TLS
certificates nobody trusts, and keep-alive connections that die under the
client's feet.

A :class:`HostileServer` runs a script of steps like a
:class:`faulty_servers.FaultyServer` (one step per request, the last one
repeating; the steps of :mod:`faulty_servers` work here too), and adds:

- TLS (``ssl=``), with :attr:`HostileServer.connections_opened` counted when
  TCP accepts a connection, before any handshake, so that a client which gives
  up during the handshake is still counted;
- keep-alive misbehaviour: ``close_after_answer=`` (close every connection a
  fixed time after its first answer, reading nothing more) and
  ``idle_timeout=`` (close a connection that brings no new request in time);
- ``on_connect=``, a hook that gets the raw connection before any request is
  read (to close in the middle of a TLS handshake, say).

Everything is bounded: no read waits longer than :data:`HANG_LIMIT`, and
leaving the ``async with`` block aborts every connection and cancels every
handler at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faulty_servers import (
    Connection,
    Request,
    conversation_id_of,
    conversation_json,
    ok,
    read_request,
)

HANG_LIMIT = 10.0
"""No read or step ever holds a connection longer than this."""

GIB = 1024**3
MIB = 1024**2

Step = Callable[[Request, Connection], Awaitable[None]]
OnConnect = Callable[[Connection], Awaitable[None]]


class HostileServer:
    """A raw HTTP/1.1 server on 127.0.0.1, port 0, plain or TLS.

    Args:
        steps: What to do with each request, in order; the last one repeats.
            Defaults to :func:`faulty_servers.ok`.
        ssl: A server-side :class:`ssl.SSLContext` to speak TLS.
        close_after_answer: Seconds after a connection's first answer at which
            it is closed; nothing more is read from it (a request the client
            sends on it meanwhile is never processed).
        idle_timeout: Seconds a connection may wait for its next request
            (the first one included) before the server closes it.
        on_connect: Called with each new connection before any request is
            read; it may end the connection (``connection.done``).

    Attributes:
        requests: Every request read in full, in order (each one reached a
            step: for a real server, each one was processed).
        connections_opened: TCP connections accepted (before TLS).
        handshakes: Connections whose TLS handshake completed (for a plain
            server: every connection).
    """

    def __init__(
        self,
        *steps: Step,
        ssl: ssl.SSLContext | None = None,
        close_after_answer: float | None = None,
        idle_timeout: float | None = None,
        on_connect: OnConnect | None = None,
    ) -> None:
        self.steps = steps or (ok,)
        self.ssl = ssl
        self.close_after_answer = close_after_answer
        self.idle_timeout = idle_timeout
        self.on_connect = on_connect
        self.requests: list[Request] = []
        self.connections_opened = 0
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def attempts(self) -> int:
        """Requests read in full: the attempts that reached the server."""
        return len(self.requests)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """``http://`` (or ``https://`` with TLS) ``127.0.0.1:PORT/v1``."""
        scheme = "http" if self.ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> HostileServer:  # noqa: PYI034  (no Self on 3.10)
        loop = asyncio.get_running_loop()

        def accept() -> asyncio.StreamReaderProtocol:
            # Called when TCP accepts, before a TLS handshake starts: the
            # count includes clients that give up during the handshake.
            self.connections_opened += 1
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._serve)

        self._server = await loop.create_server(
            accept,
            "127.0.0.1",
            0,
            ssl=self.ssl,
            ssl_handshake_timeout=None if self.ssl is None else HANG_LIMIT,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=HANG_LIMIT)
        await asyncio.wait_for(self._server.wait_closed(), HANG_LIMIT)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.handshakes += 1
        connection = Connection(reader, writer)
        try:
            if self.on_connect is not None:
                await self.on_connect(connection)
            while not connection.done:
                wait = HANG_LIMIT if self.idle_timeout is None else self.idle_timeout
                try:
                    request = await asyncio.wait_for(read_request(reader), wait)
                except asyncio.TimeoutError:
                    break  # idle for too long: close
                if request is None:
                    break
                index = min(len(self.requests), len(self.steps) - 1)
                self.requests.append(request)
                await self.steps[index](request, connection)
                if self.close_after_answer is not None and not connection.done:
                    await asyncio.sleep(self.close_after_answer)
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping: end quietly (asyncio logs a cancel)
        finally:
            if not writer.is_closing():
                writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


class ServerThread:
    """Run a :class:`HostileServer` on its own event loop in a daemon thread.

    For tests that run several event loops themselves (``asyncio.run`` twice,
    a loop per thread)::

        with ServerThread(ok) as server:
            asyncio.run(...)  # talk to server.base_url

    Takes the arguments of :class:`HostileServer`.
    """

    def __init__(self, *steps: Step, **kwargs: Any) -> None:
        self.server = HostileServer(*steps, **kwargs)
        self._ready = threading.Event()
        self._stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        if not self._ready.wait(HANG_LIMIT) or self._stop is None:
            raise RuntimeError("the server thread did not start")
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None
        loop, stop = self._stop
        loop.call_soon_threadsafe(stop.set)
        self._thread.join(HANG_LIMIT)
        assert not self._thread.is_alive(), "the server thread did not stop"

    def _main(self) -> None:
        async def serve() -> None:
            stop = asyncio.Event()
            async with self.server:
                self._stop = (asyncio.get_running_loop(), stop)
                self._ready.set()
                await asyncio.wait_for(stop.wait(), 10 * HANG_LIMIT)

        try:
            asyncio.run(serve())
        finally:
            self._ready.set()


# -- steps ------------------------------------------------------------------------


def raw(data: bytes, *, then_close: bool = True) -> Step:
    """Write *data* as it is (status line and all), then close the connection."""

    async def step(request: Request, connection: Connection) -> None:
        await connection.send(data)
        if then_close:
            connection.close()

    return step


async def ok_then_close(request: Request, connection: Connection) -> None:
    """Answer 200 with ``Connection: close``, then close: nothing stays pooled."""
    await connection.respond(200, conversation_json(request), [("Connection", "close")])
    connection.close()


def slow(seconds: float, then: Step = ok) -> Step:
    """Wait *seconds* (at most :data:`HANG_LIMIT`), then run *then*."""

    async def step(request: Request, connection: Connection) -> None:
        await asyncio.sleep(min(seconds, HANG_LIMIT))
        await then(request, connection)

    return step


def by_conversation(steps: Mapping[str, Step], default: Step = ok) -> Step:
    """Answer each request with the step of its conversation id, else *default*."""

    async def step(request: Request, connection: Connection) -> None:
        await steps.get(conversation_id_of(request), default)(request, connection)

    return step


def compressed(
    status: int,
    body: bytes | Callable[[], bytes],
    encoding: str,
    *,
    chunked: bool = False,
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> Step:
    """Answer with *body*, already encoded, under ``Content-Encoding: encoding``.

    Args:
        status: The status to send.
        body: The encoded bytes, or a function that returns them (called on
            the first request, so that an expensive body is built only when a
            test needs it).
        encoding: The ``Content-Encoding`` value (``gzip``, ``deflate``).
        chunked: Send ``Transfer-Encoding: chunked`` and no Content-Length.
        headers: Further response headers.
        content_type: The ``Content-Type`` value.
    """

    async def step(request: Request, connection: Connection) -> None:
        data = body() if callable(body) else body
        lines = [
            f"HTTP/1.1 {status} Whatever",
            f"Content-Type: {content_type}",
            f"Content-Encoding: {encoding}",
            *(f"{name}: {value}" for name, value in headers or []),
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(data)}",
        ]
        await connection.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not chunked:
            await connection.send(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), 64 * 1024):
            piece = view[start : start + 64 * 1024]
            await connection.send(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
        await connection.send(b"0\r\n\r\n")

    return step


def gzip_bytes(data: bytes) -> bytes:
    """*data* as a gzip member."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def deflate_bytes(data: bytes) -> bytes:
    """*data* as HTTP ``deflate`` (a zlib stream, RFC 1950)."""
    return zlib.compress(data, 9)


# -- connection hooks -------------------------------------------------------------


async def close_on_first_bytes(connection: Connection) -> None:
    """Read what the client sends first (a TLS ClientHello), then close."""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        await asyncio.wait_for(connection.reader.read(1), HANG_LIMIT)
    connection.close()


# -- bodies -----------------------------------------------------------------------


@functools.cache
def _raw_deflate_of_zeros(size: int) -> bytes:
    """Raw deflate data (no header) that inflates to *size* zero bytes.

    Each MiB is compressed on its own after a full flush, so every MiB but the
    first compresses to the same bytes: compressing two of them is enough.
    """
    assert size % MIB == 0
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MIB)
    first = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    return first + again * (size // MIB - 1) + packer.flush(zlib.Z_FINISH)


@functools.cache
def inflating_gzip(size: int = GIB) -> bytes:
    """A gzip member of about ``size / 1000`` bytes that inflates to *size* zeros."""
    crc = 0
    zeros = bytes(MIB)
    for _ in range(size // MIB):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, size % 2**32)
    return header + _raw_deflate_of_zeros(size) + trailer


@functools.cache
def inflating_deflate(size: int = GIB) -> bytes:
    """An HTTP ``deflate`` (zlib) stream that inflates to *size* zero bytes."""
    adler = ((size % 65521) << 16) | 1  # Adler-32 of zeros: a stays 1, b counts
    return b"\x78\xda" + _raw_deflate_of_zeros(size) + struct.pack(">I", adler)
