"""max_response_size bounds the DECODED body: compression bombs, success and error.

A server may send a small compressed body that inflates to a gigabyte. The
client must stop reading once the decoded body passes ``max_response_size``,
whether the answer is a success or an error, with a Content-Length or chunked,
and its memory must stay bounded while it does (measured with tracemalloc).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from faulty_servers import CID, conversation_body
from hostile_servers import (
    MIB,
    Connection,
    HostileServer,
    Request,
    compressed,
    deflate_bytes,
    gzip_bytes,
    inflating_deflate,
    inflating_gzip,
)

from dify_async import (
    APIResponseValidationError,
    AsyncDifyClient,
    Conversation,
    DifyError,
    InternalServerError,
    NotFoundError,
)

KEY = "app-hostile-bodies-key"
USER = "user-42"
MEMORY_BOUND = 64 * 1024 * 1024
"""Peak bytes a call may allocate while refusing a 1 GiB body."""
CALL_LIMIT = 60.0
"""No call in this file may take longer, whatever the client does."""
SMALL_LIMIT = 64 * 1024

BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "gzip": (inflating_gzip, "gzip"),
    "deflate": (inflating_deflate, "deflate"),
}
ENCODERS = {"gzip": gzip_bytes, "deflate": deflate_bytes}


class Peak:
    """The most bytes traced at once during a ``with measured_peak()`` block."""

    bytes = 0


@contextlib.contextmanager
def measured_peak() -> Iterator[Peak]:
    """Trace Python allocations; record the peak above the starting point."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1] - baseline
        if not was_tracing:
            tracemalloc.stop()


async def rename(client: AsyncDifyClient) -> Conversation:
    call = client.rename_conversation(CID, user=USER, name="Trip plans")
    return await asyncio.wait_for(call, CALL_LIMIT)


@pytest.fixture(scope="module", autouse=True)
def bombs_built() -> None:
    """Build both 1 GiB bombs once, before any test measures memory."""
    for build, _ in BOMBS.values():
        build()


# -- 1 GiB bombs, default limit (8 MiB) -------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_a_success_that_inflates_to_a_gibibyte_is_refused(
    new_client, bomb, chunked
):
    """A 200 inflating to 1 GiB: APIResponseValidationError, body None, < 64 MiB."""
    build, encoding = BOMBS[bomb]
    step = compressed(200, build(), encoding, chunked=chunked)
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        with measured_peak() as peak, pytest.raises(APIResponseValidationError) as err:
            await rename(client)
    assert err.value.status_code == 200
    assert err.value.body is None
    assert err.value.attempts == server.attempts == 1
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.bytes / 2**20:.0f} MiB"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_an_error_that_inflates_to_a_gibibyte_is_refused(
    new_client, bomb, chunked
):
    """A 500 inflating to 1 GiB: InternalServerError, body None, < 64 MiB."""
    build, encoding = BOMBS[bomb]
    step = compressed(500, build(), encoding, chunked=chunked)
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=0)
        with measured_peak() as peak, pytest.raises(InternalServerError) as err:
            await rename(client)
    assert err.value.status_code == 500
    assert err.value.body is None
    assert err.value.attempts == server.attempts == 1
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.bytes / 2**20:.0f} MiB"


async def test_retried_bombs_stay_bounded_too(new_client, no_retry_wait):
    """Three 500 bombs in a row (two retries) still peak under 64 MiB in all."""
    step = compressed(500, inflating_gzip(), "gzip")
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=2)
        with measured_peak() as peak, pytest.raises(InternalServerError) as err:
            await rename(client)
    assert err.value.body is None
    assert err.value.attempts == server.attempts == 3
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.bytes / 2**20:.0f} MiB"


async def test_the_connection_of_a_refused_bomb_is_not_reused(new_client):
    """After refusing a bomb, the next call works (the rest is never read as HTTP)."""
    step = compressed(200, inflating_gzip(), "gzip")
    async with HostileServer(
        step, compressed(200, gzip_bytes(conversation_body()), "gzip")
    ) as server:
        client = new_client(server.base_url)
        with pytest.raises(APIResponseValidationError):
            await rename(client)
        conversation = await rename(client)
    assert conversation.id == CID
    assert server.attempts == 2


async def endless(request: Request, connection: Connection) -> None:
    """A 200 with neither Content-Length nor chunking: zeros until the client quits.

    Capped at 256 MiB (HTTP/1.0 style: the body ends when the connection does).
    """
    await connection.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n\r\n"
    )
    zeros = bytes(MIB)
    for _ in range(256):
        await connection.send(zeros)
    connection.close()


async def giant_chunk(request: Request, connection: Connection) -> None:
    """A chunked 500 announcing a 1 TiB chunk, then sending zeros (256 MiB at most)."""
    await connection.send(
        b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % 2**40
    )
    zeros = bytes(MIB)
    for _ in range(256):
        await connection.send(zeros)
    connection.close()


def many_gzip_members() -> bytes:
    """100 gzip members of 1 MiB of zeros each, one after the other."""
    return gzip_bytes(bytes(MIB)) * 100


def nested_gzip() -> bytes:
    """The 1 GiB gzip bomb, gzipped again (sent as ``gzip, gzip``)."""
    return gzip_bytes(inflating_gzip())


@pytest.mark.parametrize(
    "step",
    [
        endless,
        giant_chunk,
        compressed(200, many_gzip_members, "gzip"),
        compressed(200, nested_gzip, "gzip, gzip"),
        compressed(500, nested_gzip, "gzip, gzip", chunked=True),
    ],
    ids=["endless", "giant-chunk", "many-gzip-members", "gzip-twice", "gzip-twice-500"],
)
async def test_other_endless_bodies_end_in_a_dify_error(new_client, step):
    """Bodies without an end, or encoded twice: a DifyError, memory bounded."""
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=0)
        with measured_peak() as peak, pytest.raises(DifyError) as err:
            await rename(client)
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.bytes / 2**20:.0f} MiB"
    assert getattr(err.value, "body", None) is None or len(err.value.body) < 1000
    assert err.value.attempts == server.attempts == 1


# -- a small limit ----------------------------------------------------------------


def padded_conversation(size: int) -> bytes:
    """A valid conversation body of exactly *size* bytes (padding in inputs)."""
    bare = conversation_body(inputs={"pad": ""})
    return conversation_body(inputs={"pad": "x" * (size - len(bare))})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("encoding", list(ENCODERS))
async def test_a_small_limit_applies_to_the_decoded_size(new_client, encoding, chunked):
    """2 KiB of gzip that inflates past a 64 KiB limit is refused."""
    body = ENCODERS[encoding](padded_conversation(SMALL_LIMIT + 1024))
    assert len(body) < 4096
    async with HostileServer(
        compressed(200, body, encoding, chunked=chunked)
    ) as server:
        client = new_client(server.base_url, max_response_size=SMALL_LIMIT)
        with pytest.raises(APIResponseValidationError) as err:
            await rename(client)
    assert err.value.body is None
    assert "max_response_size" in err.value.message
    assert server.attempts == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("encoding", list(ENCODERS))
async def test_a_decoded_body_at_the_limit_is_accepted(new_client, encoding, chunked):
    """A compressed conversation that inflates to exactly the limit decodes."""
    body = ENCODERS[encoding](padded_conversation(SMALL_LIMIT))
    async with HostileServer(
        compressed(200, body, encoding, chunked=chunked)
    ) as server:
        client = new_client(server.base_url, max_response_size=SMALL_LIMIT)
        conversation = await rename(client)
    assert conversation.id == CID
    assert len(conversation.inputs["pad"]) > SMALL_LIMIT - 300


@pytest.mark.parametrize("encoding", list(ENCODERS))
async def test_a_small_limit_applies_to_decoded_errors(new_client, encoding):
    """A compressed 404 that inflates past the limit: NotFoundError, body None."""
    page = json.dumps(
        {"code": "not_found", "message": "x" * (2 * SMALL_LIMIT), "status": 404}
    ).encode()
    step = compressed(404, ENCODERS[encoding](page), encoding)
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_response_size=SMALL_LIMIT)
        with pytest.raises(NotFoundError) as err:
            await rename(client)
    assert err.value.status_code == 404
    assert err.value.body is None
    assert server.attempts == 1


# -- legitimate compressed answers ------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("encoding", list(ENCODERS))
async def test_a_small_compressed_conversation_decodes(new_client, encoding, chunked):
    """A gzip or deflate conversation JSON (as Dify behind nginx sends) decodes."""
    body = ENCODERS[encoding](conversation_body(name="Compressed"))
    async with HostileServer(
        compressed(200, body, encoding, chunked=chunked)
    ) as server:
        client = new_client(server.base_url)
        conversation = await rename(client)
    assert (conversation.id, conversation.name, conversation.inputs) == (
        CID,
        "Compressed",
        {},
    )
    assert conversation.created_at is not None
    assert conversation.created_at.timestamp() == 1705407629


@pytest.mark.parametrize("encoding", list(ENCODERS))
async def test_a_small_compressed_dify_error_decodes(new_client, encoding):
    """A gzip or deflate Dify error maps to its class with code and message."""
    page = (
        b'{"code": "not_found", "message": "Conversation Not Exists.", "status": 404}'
    )
    step = compressed(404, ENCODERS[encoding](page), encoding)
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        with pytest.raises(NotFoundError) as err:
            await rename(client)
    assert err.value.code == "not_found"
    assert err.value.message == "Conversation Not Exists."
    assert err.value.body == json.loads(page)
