"""What a fake server remembers: conversations, queued faults and statistics.

Everything sits behind one lock, so that a test may seed and read from any
thread while the server answers from its own. Each method holds the lock for
constant time and does no I/O.
"""

from __future__ import annotations

import collections
import copy
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._faults import Fault, FaultQueue
from ._rules import RenameArgs, StoredConversation, apply_rename, canonical_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ServerState"]


class ServerState:
    """The thread-safe state of one :class:`~dify_async.testing.FakeDifyServer`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conversations: dict[str, StoredConversation] = {}
        self._faults = FaultQueue()
        self.requests_received = 0
        self.renames_applied = 0
        self.llm_calls = 0
        self._in_flight = 0
        self.max_in_flight = 0
        self._by_conversation: collections.Counter[str] = collections.Counter()

    # -- conversations -------------------------------------------------------

    def add_conversation(
        self,
        *,
        user: str,
        name: str,
        inputs: Mapping[str, Any] | None,
        messages: Sequence[str],
        introduction: str | None,
        status: str,
        conversation_id: str | None,
        created_at: int | None,
    ) -> str:
        """Store a new conversation; see ``FakeDifyServer.add_conversation``.

        Returns:
            Its canonical id.

        Raises:
            ValueError: *user* is empty, or the id is not a UUID or is taken.
            TypeError: *messages* is a string, or *inputs* is not JSON.
        """
        if not user:
            raise ValueError("user must not be empty; Dify uses 'DEFAULT-USER'")
        if isinstance(messages, str):
            raise TypeError("messages must be a sequence of strings, not a string")
        cid = (
            str(uuid.uuid4())
            if conversation_id is None
            else canonical_id(conversation_id)
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
        """A snapshot of a stored conversation.

        Raises:
            KeyError: No such conversation.
        """
        cid = _key(conversation_id)
        with self._lock:
            conversation = self._conversations[cid]
        return conversation._snapshot()  # noqa: SLF001

    def delete_conversation(self, conversation_id: str) -> None:
        """Forget a conversation.

        Raises:
            KeyError: No such conversation.
        """
        cid = _key(conversation_id)
        with self._lock:
            del self._conversations[cid]

    def conversations(self) -> list[StoredConversation]:
        """Snapshots of every stored conversation, oldest first."""
        with self._lock:
            stored = list(self._conversations.values())
        return [conversation._snapshot() for conversation in stored]  # noqa: SLF001

    # -- faults --------------------------------------------------------------

    def inject_fault(
        self, fault: Fault, *, times: int, conversation_id: str | None
    ) -> None:
        """Queue a fault; see ``FakeDifyServer.inject_fault``.

        Raises:
            ValueError: *times* is less than 1 or the id is not a UUID.
        """
        cid = None if conversation_id is None else canonical_id(conversation_id)
        with self._lock:
            self._faults.add(fault, times=times, conversation_id=cid)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    # -- requests ------------------------------------------------------------

    def enter(self) -> None:
        """Count a request that the server starts handling."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def leave(self) -> None:
        """Count a request that the server is done with."""
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return self._in_flight

    def receive(self, conversation_id: str) -> Fault | None:
        """Count a rename request and take the fault that strikes it, if any."""
        with self._lock:
            self.requests_received += 1
            self._by_conversation[conversation_id] += 1
            return self._faults.take(conversation_id) if self._faults else None

    def rename(
        self, conversation_id: str, args: RenameArgs, *, llm_fails: bool
    ) -> StoredConversation:
        """Apply a validated rename and count what it did.

        Returns:
            The conversation to answer with.

        Raises:
            AppError: Dify refuses the rename (see ``apply_rename``).
        """
        now = int(time.time())
        with self._lock:
            outcome = apply_rename(
                self._conversations.get(conversation_id),
                args,
                now=now,
                llm_fails=llm_fails,
            )
            self.llm_calls += outcome.llm_called
            if outcome.stored:
                self._conversations[conversation_id] = outcome.conversation
                self.renames_applied += 1
        return outcome.conversation

    # -- statistics ----------------------------------------------------------

    def requests_by_conversation(self) -> collections.Counter[str]:
        """A copy of the number of rename requests per conversation id."""
        with self._lock:
            return collections.Counter(self._by_conversation)

    def reset_stats(self) -> None:
        """Set every statistic back to zero."""
        with self._lock:
            self.requests_received = 0
            self.renames_applied = 0
            self.llm_calls = 0
            self.max_in_flight = self._in_flight
            self._by_conversation.clear()


def _key(conversation_id: str) -> str:
    """The canonical id under which a conversation is stored.

    Raises:
        KeyError: *conversation_id* is not a UUID (so no conversation has it).
    """
    try:
        return canonical_id(conversation_id)
    except ValueError:
        raise KeyError(conversation_id) from None
