"""dify_async.testing, used as a test suite uses it, for mypy --strict.

Never run (see check_client.py).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest
from typing_extensions import assert_type

from dify_async import AsyncDifyClient
from dify_async.testing import (
    FakeDifyServer,
    Fault,
    StoredConversation,
    instant_retries,
    set_instant_retries,
)


@pytest.fixture
def dify(
    dify_server: FakeDifyServer, monkeypatch: pytest.MonkeyPatch
) -> FakeDifyServer:
    monkeypatch.setenv("DIFY_API_KEY", dify_server.api_key)
    monkeypatch.setenv("DIFY_BASE_URL", dify_server.base_url)
    return dify_server


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    with instant_retries():
        yield


async def test_with_the_fixture(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(
        user="user-42",
        name="New conversation",
        inputs={"city": "Lisbon"},
        messages=["Hi"],
        conversation_id="45701982-8118-4bc5-8e9b-64562b4555f2",
        created_at=1705407629,
    )
    assert_type(cid, str)
    dify_server.inject_fault(Fault.gateway(502), times=2, conversation_id=cid)
    dify_server.inject_fault(Fault.rate_limit(retry_after="1", retry_after_ms="1000"))
    dify_server.inject_fault(Fault.http(500, "oops", content_type="text/plain"))
    dify_server.inject_fault(Fault.http(200, b"{}", headers={"X-Version": "1.9.2"}))
    dify_server.inject_fault(Fault.disconnect(after_processing=True))
    dify_server.inject_fault(Fault.delay(0.5))
    dify_server.clear_faults()
    dify_server.latency = 0.01
    dify_server.llm_fails = True

    async with AsyncDifyClient(
        dify_server.api_key, base_url=dify_server.base_url
    ) as client:
        await client.rename_conversation(cid, name="Trip plans", user="user-42")

    stored = dify_server.get_conversation(cid)
    assert_type(stored, StoredConversation)
    assert_type(stored.name, str)
    assert_type(stored.rename_count, int)
    assert_type(stored.messages, tuple[str, ...])
    assert_type(stored.updated_at, int | None)
    assert_type(dify_server.conversations, list[StoredConversation])
    assert_type(dify_server.requests_received, int)
    assert_type(dify_server.renames_applied, int)
    assert_type(dify_server.llm_calls, int)
    assert_type(dify_server.max_in_flight, int)
    assert_type(dify_server.requests_by_conversation, collections.Counter[str])
    dify_server.reset_stats()
    dify_server.delete_conversation(cid)

    dify_server.add_conversation(name="No user")  # type: ignore[call-arg]
    dify_server.inject_fault("502")  # type: ignore[arg-type]
    stored.name = "x"  # type: ignore[misc]


def test_a_synchronous_test(dify: FakeDifyServer) -> None:
    assert_type(dify.base_url, str)
    assert_type(dify.api_key, str)
    assert_type(dify.workflow_api_key, str)
    assert_type(dify.disabled_api_key, str)


async def test_an_own_server() -> None:
    async with FakeDifyServer(latency=0.01, version="1.9.2") as server:
        assert_type(server, FakeDifyServer)
        assert_type(server.version, str)
    with FakeDifyServer() as threaded:
        assert_type(threaded, FakeDifyServer)
    manual = FakeDifyServer(port=0)
    await manual.start()
    await manual.stop()
    manual.start_in_thread()
    manual.stop_thread()


def test_instant_retries_by_hand() -> None:
    set_instant_retries(True)
    set_instant_retries(False)
    set_instant_retries("yes")  # type: ignore[arg-type]
