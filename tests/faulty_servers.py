"""Tiny HTTP/1.1 servers on 127.0.0.1 that misbehave on purpose.

aiohttp.web always speaks correct HTTP; these servers are raw asyncio streams so
a test can reset a connection, cut a body short, trickle bytes or never answer.
Each server counts what it saw (requests, connections) so tests can assert the
number of attempts from the server's side.

A server runs a *script*: one step per request, the last step repeating::

    async with FaultyServer(reset, reset, ok) as server:
        ...  # first two requests are reset, then every request succeeds
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
KEY = "app-faulty-test-key"
HANG_LIMIT = 10.0
"""No step ever holds a connection longer than this, whatever the test does."""

NGINX_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
REASONS = {
    200: "OK",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


class Request:
    """One request as the server read it off the wire."""

    def __init__(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """The server's end of one TCP connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.done = False
        self.peer_closed = False

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        *,
        content_length: int | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Whatever')}"]
        lines += [f"{name}: {value}" for name, value in headers or []]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        all_headers = [("Content-Type", content_type), *(headers or [])]
        await self.head(status, all_headers, content_length=len(body))
        await self.send(body)

    def reset(self) -> None:
        """Abort with a TCP RST instead of a clean close."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        self.writer.transport.abort()
        self.done = True

    def close(self) -> None:
        """Close cleanly (FIN) after what was written."""
        self.writer.close()
        self.done = True


Step = Callable[[Request, Connection], Awaitable[None]]


class FaultyServer:
    """A raw HTTP server on 127.0.0.1, port 0, that runs a script of steps.

    Attributes:
        requests: Every complete request received, in order.
        connections_opened: TCP connections accepted.
        open_connections: TCP connections open right now.
        max_open_connections: The most that were open at once.
        closed_by_peer: Connections the client closed (EOF seen by the server).
    """

    def __init__(self, *steps: Step) -> None:
        if not steps:
            steps = (ok,)
        self.steps = steps
        self.requests: list[Request] = []
        self.connections_opened = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.closed_by_peer = 0
        self.bytes_sent = 0
        self.request_arrived = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[Connection] = set()

    @property
    def attempts(self) -> int:
        """Requests received: the attempts the client made that got through."""
        return len(self.requests)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Abort rather than cancel: every step then ends on its own, at once.
        for connection in list(self._connections):
            connection.writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=HANG_LIMIT)
        await self._server.wait_closed()

    async def wait_until_idle(self, timeout: float = 3.0) -> None:
        """Return once every connection is closed."""
        await asyncio.wait_for(self.idle.wait(), timeout)

    async def wait_for_requests(self, count: int, timeout: float = 3.0) -> None:
        """Return once *count* requests have arrived."""

        async def arrived() -> None:
            while len(self.requests) < count:
                self.request_arrived.clear()
                await self.request_arrived.wait()

        await asyncio.wait_for(arrived(), timeout)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_opened += 1
        self.open_connections += 1
        self.idle.clear()
        self.max_open_connections = max(
            self.max_open_connections, self.open_connections
        )
        connection = Connection(reader, writer)
        self._connections.add(connection)
        try:
            while not connection.done:
                request = await read_request(reader)
                if request is None:
                    connection.peer_closed = True
                    break
                index = min(len(self.requests), len(self.steps) - 1)
                self.requests.append(request)
                self.request_arrived.set()
                await self.steps[index](request, connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.peer_closed = True
        finally:
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.closed_by_peer += connection.peer_closed
            self.open_connections -= 1
            if not self.open_connections:
                self.idle.set()
            self._tasks.discard(task)
            self._connections.discard(connection)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request (head and Content-Length body); ``None`` at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def refused_base_url() -> str:
    """A base URL on a 127.0.0.1 port where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def conversation_id_of(request: Request) -> str:
    """The conversation id in a rename request's path."""
    return request.path.split("/")[-2]


def conversation_body(
    conversation_id: str = CID, name: str = "Trip plans", **extra: Any
) -> bytes:
    """A 200 body for *conversation_id*, with *extra* fields added or replaced."""
    fields: dict[str, Any] = {
        "id": conversation_id,
        "name": name,
        "inputs": {},
        "status": "normal",
        "introduction": "",
        "created_at": 1705407629,
        "updated_at": 1705411229,
        **extra,
    }
    return json.dumps(fields).encode()


def conversation_json(request: Request) -> bytes:
    """The 200 body Dify sends back for *request*."""
    sent = request.json()
    name = "Generated title" if sent.get("auto_generate") else sent["name"]
    return conversation_body(conversation_id_of(request), name)


# -- steps ------------------------------------------------------------------------


async def ok(request: Request, connection: Connection) -> None:
    """Answer 200 with the renamed conversation, keeping the connection open."""
    await connection.respond(200, conversation_json(request), [("X-Version", "1.4.0")])


async def reset(request: Request, connection: Connection) -> None:
    """Reset the connection without any response."""
    connection.reset()


async def hang(request: Request, connection: Connection) -> None:
    """Never answer; close when the client gives up (or after HANG_LIMIT)."""
    await wait_for_peer_close(connection)
    connection.close()


async def wait_for_peer_close(connection: Connection) -> None:
    """Read until the client closes the connection, for at most HANG_LIMIT."""
    try:
        while await asyncio.wait_for(connection.reader.read(65536), HANG_LIMIT):
            pass
    except asyncio.TimeoutError:
        return
    connection.peer_closed = True


def trickle(interval: float) -> Step:
    """Send the head at once, then the body one byte every *interval* seconds."""

    async def step(request: Request, connection: Connection) -> None:
        body = conversation_json(request)
        await connection.head(
            200, [("Content-Type", "application/json")], content_length=len(body)
        )
        for byte in body:
            await connection.send(bytes([byte]))
            await asyncio.sleep(interval)

    return step


def reply(
    status: int,
    body: bytes | str = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    content_type: str = "application/json",
) -> Step:
    """Answer with exactly this status, body and headers."""
    raw = body.encode() if isinstance(body, str) else body

    async def step(request: Request, connection: Connection) -> None:
        await connection.respond(status, raw, headers, content_type=content_type)

    return step


def gateway_page(status: int) -> Step:
    """Answer like nginx in front of a dead upstream: an HTML error page."""
    page = NGINX_PAGE.format(status=status, reason=REASONS[status])
    return reply(status, page, [("Server", "nginx")], content_type="text/html")


def dify_error(status: int, code: str, message: str = "") -> Step:
    """Answer with a Dify JSON error."""
    body = json.dumps({"code": code, "message": message, "status": status})
    return reply(status, body, [("X-Version", "1.4.0")])


def rate_limited(*headers: tuple[str, str]) -> Step:
    """Answer 429 like a gateway's rate limiter, with the given headers."""
    return reply(429, b'{"message": "API rate limit exceeded"}', list(headers))


def http_date(seconds_from_now: float) -> str:
    """An IMF-fixdate *seconds_from_now* in the future (or past)."""
    return formatdate(time.time() + seconds_from_now, usegmt=True)
