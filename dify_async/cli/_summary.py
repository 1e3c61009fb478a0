"""What a batch run did: counted as it runs, printed as text or JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import attrs

from dify_async import Conversation, RenameRequest

from ._parser import EXIT_FAILED, EXIT_OK

__all__ = ["UNTITLED_NOTE", "Summary", "is_untitled"]

_DEFAULT_NAME: Final = "New conversation"

UNTITLED_NOTE: Final = (
    "auto_generate kept the old name: the app's system model could not generate a title"
)


def is_untitled(request: RenameRequest, conversation: Conversation) -> bool:
    """Whether an ``auto_generate`` rename came back without a title.

    Dify answers 200 and keeps the old name when its title LLM call fails, so
    a blank name or Dify's default one is the only sign of it.

    Args:
        request: The rename.
        conversation: What the server answered.

    Returns:
        Whether *request* asked for a title and got none.
    """
    name = conversation.name
    return request.auto_generate and (not name.strip() or name == _DEFAULT_NAME)


@attrs.define
class Summary:
    """What a batch run did, counted as it ran.

    Every row read ends in exactly one of :attr:`succeeded`,
    :attr:`skipped`, :attr:`failures` and :attr:`in_flight`; the rows never
    read are :attr:`not_reached`.

    Attributes:
        total: How many rows the input holds, when known.
        rows: The rows read.
        succeeded: Rows renamed by this run.
        skipped: Rows renamed by an earlier run (``--resume``).
        failures: Rows that did not end renamed, by reason.
        untitled: ``auto_generate`` renames that came back blank or still
            "New conversation" (counted in :attr:`succeeded` too).
        in_flight: Rows whose rename was under way when the run was
            interrupted: their outcome is unknown.
        retried: Renames that needed more than one request.
        retries: Requests sent again.
        requests: Requests sent.
        elapsed: Seconds the run took.
        stopped: Why the run started no new rows, if it stopped early.
        interrupted: The signal that interrupted the run, if one did.
        input_error: Why the input could not be read to its end, if so.
        hints: What to fix, learnt from the failures.
        resume_command: The command that resumes the run, when it is worth
            running.
        failure_notes: A note per failure reason, shown next to its count.
        resumable: Whether a resume can retry the rows in flight (the run
            has a results file).
    """

    total: int | None = None
    rows: int = 0
    succeeded: int = 0
    skipped: int = 0
    failures: Counter[str] = attrs.field(factory=Counter)
    untitled: int = 0
    in_flight: int = 0
    retried: int = 0
    retries: int = 0
    requests: int = 0
    elapsed: float = 0.0
    stopped: str | None = None
    interrupted: int | None = None
    input_error: str | None = None
    hints: list[str] = attrs.field(factory=list)
    resume_command: str | None = None
    failure_notes: dict[str, str] = attrs.field(factory=dict)
    resumable: bool = True

    def interrupt(self, signum: int) -> None:
        """Record the signal that interrupted the run (the first one counts)."""
        if self.interrupted is None:
            self.interrupted = signum

    @property
    def failed(self) -> int:
        """Rows that did not end renamed."""
        return sum(self.failures.values())

    @property
    def not_reached(self) -> int | None:
        """Rows never read (the run ended early), when the total is known."""
        return None if self.total is None else max(self.total - self.rows, 0)

    @property
    def all_ok(self) -> bool:
        """Whether the run finished and every row ended renamed."""
        return not (self.failed or self.stopped or self.interrupted or self.input_error)

    @property
    def exit_status(self) -> int:
        """0 when all is well, 1 when not, 128 + N after signal N."""
        if self.interrupted is not None:
            return 128 + self.interrupted
        return EXIT_OK if self.all_ok else EXIT_FAILED

    def add_hint(self, text: str) -> None:
        """Remember a hint, once.

        Args:
            text: The hint.
        """
        if text not in self.hints:
            self.hints.append(text)

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON object.

        Returns:
            The counts and how the run ended.
        """
        return {
            "total": self.total,
            "rows": self.rows,
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": dict(self.failures.most_common()),
            "untitled": self.untitled,
            "in_flight": self.in_flight,
            "not_reached": self.not_reached,
            "retried": self.retried,
            "retries": self.retries,
            "requests": self.requests,
            "elapsed": round(self.elapsed, 3),
            "requests_per_second": round(self._rate(), 1),
            "stopped": self.stopped,
            "interrupted": self.interrupted is not None,
            "input_error": self.input_error,
            "hints": self.hints,
            "resume_command": self.resume_command,
        }

    def _rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def _counts(self) -> list[tuple[str, int, str]]:
        ended = self.stopped or self.interrupted or self.input_error
        unknown = "outcome unknown" + (
            "; a resume will retry them" if self.resumable else ""
        )
        not_reached = self.not_reached
        return [
            ("succeeded", self.succeeded, ""),
            *(
                [("already done", self.skipped, "renamed by an earlier run, skipped")]
                if self.skipped
                else []
            ),
            *([("untitled", self.untitled, UNTITLED_NOTE)] if self.untitled else []),
            ("failed", self.failed, ""),
            *(
                (f"  {reason}", count, self.failure_notes.get(reason, ""))
                for reason, count in self.failures.most_common()
            ),
            *([("in flight", self.in_flight, unknown)] if self.in_flight else []),
            *(
                [("not reached", not_reached, "not attempted")]
                if ended and not_reached
                else []
            ),
            (
                "retried",
                self.retried,
                f"renames that needed more than one request; {self.retries:,} retries",
            ),
            ("requests sent", self.requests, f"{self._rate():,.0f} requests/s"),
        ]

    def lines(self) -> list[str]:
        """The summary as text.

        Returns:
            Its lines: a headline, the counts, how the run ended, hints, and
            the command that resumes it.
        """
        renamed = self.succeeded + self.skipped
        of = self.rows if self.total is None else self.total
        elapsed = f"{self.elapsed:.1f} s"
        out = [f"Summary: {renamed:,} of {of:,} rows renamed in {elapsed}"]
        counts = self._counts()
        width = max(len(f"{count:,}") for _, count, _ in counts)
        label_width = max(len(label) for label, _, _ in counts)
        for label, count, note in counts:
            text = f"  {label:<{label_width}}  {count:>{width},}"
            out.append(f"{text}  ({note})" if note else text)
        if self.stopped:
            out.append(f"Stopped early: {self.stopped}")
        if self.interrupted is not None:
            out.append("Interrupted: rows not reached were not attempted.")
        if self.input_error:
            out.append(f"Input error: {self.input_error}")
        out.extend(f"Hint: {text}" for text in self.hints)
        if self.resume_command:
            out.append(f"To resume: {self.resume_command}")
        return out
