"""Soak: thousands of renames through a server that fails one request in ten.

Against :class:`FakeDifyServer` with a mix of faults aimed at one conversation
in ten (a gateway 502 or 503 before processing, or a connection dropped after
the rename was stored), every request gets exactly one outcome, no rename is
lost, and no conversation is renamed (or billed an LLM call) more often than
its faults can explain. Retry waits are instant; everything else is real.
"""

from __future__ import annotations

import asyncio
import collections

from dify_async import AsyncDifyClient, Conversation, DifyError, RenameRequest
from dify_async.testing import FakeDifyServer, Fault, instant_retries

USER = "soak-user"
EXPLICIT_RENAMES = 5000
AUTO_RENAMES = 1000
CONCURRENCY = 64
SOAK_LIMIT = 300.0
"""A hung soak fails after this many seconds instead of hanging the suite."""

FAULTS = (
    Fault.gateway(502),
    Fault.gateway(503),
    Fault.disconnect(after_processing=True),
)


def inject_mixed_faults(fake: FakeDifyServer, ids: list[str]) -> dict[str, list[Fault]]:
    """Aim faults at one conversation in ten (two faults at one in fifty).

    Returns:
        The faults aimed at each conversation that has any.
    """
    aimed: dict[str, list[Fault]] = collections.defaultdict(list)
    for n, cid in enumerate(ids):
        if n % 10 != 3:
            continue
        count = 2 if n % 50 == 3 else 1
        for k in range(count):
            fault = FAULTS[(n // 10 + k) % len(FAULTS)]
            fake.inject_fault(fault, conversation_id=cid)
            aimed[cid].append(fault)
    return aimed


def stored_renames_allowed(faults: list[Fault]) -> int:
    """1, plus one per fault that stores the rename before failing the answer."""
    return 1 + sum(fault.after_processing for fault in faults)


async def test_explicit_renames_are_never_lost_nor_repeated_beyond_their_faults(fake):
    """5,000 explicit renames, 10% faulted: all land, each one outcome."""
    ids = [fake.add_conversation(user=USER) for _ in range(EXPLICIT_RENAMES)]
    aimed = inject_mixed_faults(fake, ids)
    requests = [RenameRequest(cid, USER, f"Soaked {n}") for n, cid in enumerate(ids)]
    with instant_retries():
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            outcomes = await asyncio.wait_for(
                client.rename_many(requests, concurrency=CONCURRENCY), SOAK_LIMIT
            )

    assert len(outcomes) == len(requests)
    failed = [o for o in outcomes if not isinstance(o, Conversation)]
    assert [error.label for error in failed if isinstance(error, DifyError)] == []
    assert failed == []
    per_conversation = fake.requests_by_conversation
    for request, outcome in zip(requests, outcomes, strict=True):
        cid = request.conversation_id
        stored = fake.get_conversation(cid)
        faults = aimed.get(cid, [])
        assert isinstance(outcome, Conversation)
        assert (outcome.id, outcome.name) == (cid, request.name)
        assert stored.name == request.name  # nothing lost
        assert 1 <= stored.rename_count <= stored_renames_allowed(faults), cid
        # Each fault struck once and was retried once: none was skipped.
        assert per_conversation[cid] == 1 + len(faults), cid
    assert fake.llm_calls == 0


async def test_auto_generate_renames_never_pay_twice(fake):
    """1,000 auto_generate renames, 10% faulted: at most one LLM call each."""
    ids = [
        fake.add_conversation(user=USER, messages=[f"Question number {n}"])
        for n in range(AUTO_RENAMES)
    ]
    aimed = inject_mixed_faults(fake, ids)
    requests = [RenameRequest(cid, USER, auto_generate=True) for cid in ids]
    with instant_retries():
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            outcomes = await asyncio.wait_for(
                client.rename_many(requests, concurrency=CONCURRENCY), SOAK_LIMIT
            )

    assert len(outcomes) == len(requests)
    per_conversation = fake.requests_by_conversation
    generated = 0
    for request, outcome in zip(requests, outcomes, strict=True):
        cid = request.conversation_id
        stored = fake.get_conversation(cid)
        faults = aimed.get(cid, [])
        assert stored.rename_count <= 1, f"{cid} billed {stored.rename_count} times"
        assert per_conversation[cid] <= 1 + len(faults), cid
        generated += stored.rename_count
        if not faults:
            assert isinstance(outcome, Conversation), outcome
        if isinstance(outcome, Conversation):
            assert outcome.id == cid
            assert stored.rename_count == 1
            assert outcome.name == stored.name
        else:
            assert isinstance(outcome, DifyError), outcome
    assert fake.llm_calls == generated <= AUTO_RENAMES
