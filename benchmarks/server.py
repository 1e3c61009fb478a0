"""A fast HTTP/1.1 keep-alive server for the benchmarks.

It answers ``POST /v1/conversations/{id}/name`` with a pre-built 200
response (a conversation, as Dify sends it) into which only the requested id
is spliced, so that the client under test is always the bottleneck. It is a
bare :class:`asyncio.Protocol`: no routing framework, no per-request
allocation beyond slicing the input buffer and splicing the id.

``GET /__stats`` answers with the server's own CPU seconds and request count,
which the driver reads before and after each run to show how much capacity
the server had to spare.

Run as ``python benchmarks/server.py [--cpu N]``: it prints ``PORT <n>`` on
stdout once it listens on 127.0.0.1, and serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

CONVERSATION = {
    "id": "45701982-8118-4bc5-8e9b-64562b4555f2",
    "name": "iPhone Specs Chat",
    "inputs": {"city": "San Francisco"},
    "status": "normal",
    "introduction": "Welcome! How can I help you today?",
    "created_at": 1705407629,
    "updated_at": 1705411229,
}


def _response(
    status: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Version: 1.9.2\r\n"
        "X-Env: PRODUCTION\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


# The answer around the id, which has a fixed length (a canonical UUID).
OK_START, OK_END = _response("200 OK", json.dumps(CONVERSATION).encode()).split(
    CONVERSATION["id"].encode()
)
NOT_FOUND = _response(
    "404 NOT FOUND",
    b'{"code": "not_found", "message": "Not Found.", "status": 404}',
)
PREFIX = b"POST /v1/conversations/"
SUFFIX = b"/name HTTP/1.1"
LENGTH = b"\r\ncontent-length:"


class Stats:
    requests = 0


class RenameProtocol(asyncio.Protocol):
    """Parses keep-alive (and pipelined) requests; answers each at once."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            start = head.lower().find(LENGTH)
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + len(LENGTH) : stop if stop > 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                break
            line = head[: head.find(b"\r\n")]
            if line.startswith(PREFIX) and line.endswith(SUFFIX):
                out.append(OK_START + line[len(PREFIX) : -len(SUFFIX)] + OK_END)
                Stats.requests += 1
            elif line.startswith(b"GET /__stats "):
                out.append(self.stats())
            else:
                out.append(NOT_FOUND)
            buffer = buffer[total:]
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    @staticmethod
    def stats() -> bytes:
        body = json.dumps(
            {"cpu": time.process_time(), "requests": Stats.requests}
        ).encode()
        return _response("200 OK", body)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        RenameProtocol, "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    # Serve until the driver closes our stdin (or dies).
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or _stdin_ready(done))
    async with server:
        await done


def _stdin_ready(done: asyncio.Future[None]) -> None:
    if not os.read(sys.stdin.fileno(), 4096):
        done.set_result(None)


class ServerProcess:
    """The server in a child process; ``with`` starts and stops it."""

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):  # the instance itself
        command = [sys.executable, __file__]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
