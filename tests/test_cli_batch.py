"""dify-async batch: rows, outcomes, progress and the summary."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import (
    QUESTION,
    USER,
    cli_env,
    read_results,
    run,
    seed,
    start,
    summary_counts,
    write_csv,
    write_jsonl,
)

from dify_async.cli import main
from dify_async.testing import Fault


def test_batch_csv_accounts_for_every_row(server, tmp_path):
    """Every row ends renamed or reported: bad rows by line, failures by reason."""
    ids = seed(server, 300)
    rows = [[cid, USER, f"Ticket, #{n}", ""] for n, cid in enumerate(ids)]
    rows[10] = ["not-a-uuid", USER, "x", ""]
    rows[11] = [ids[11], USER, "", "no"]  # no name, no auto_generate
    rows[12] = [ids[12], USER, "", "TRUE"]  # auto_generate
    rows[13] = [ids[13], "intruder", "Not mine", ""]  # a 404
    rows[14] = [ids[0], USER, "Twice", ""]  # the same conversation again
    rows[15] = [ids[15], USER, "x", "maybe"]
    rows[16] = [ids[16], "", "No user", ""]
    source = write_csv(tmp_path / "rows.csv", rows)
    output = tmp_path / "results.jsonl"

    done = run(
        "batch",
        str(source),
        "--output",
        str(output),
        "--concurrency",
        "8",
        "--json",
        server=server,
    )

    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["rows"] == summary["total"] == 300
    assert summary["succeeded"] == 294
    assert summary["failures"] == {"bad row": 5, "404 not_found": 1}
    assert summary["untitled"] == 0
    assert summary["in_flight"] == 0
    assert summary["not_reached"] == 0
    # CSV line numbers: the header is line 1.
    assert "line 12: bad row: conversation_id must be a UUID" in done.stderr
    assert "line 13: bad row: no name and auto_generate is not true" in done.stderr
    assert "line 16: bad row: conversation_id repeats line 2" in done.stderr
    assert "line 17: bad row: auto_generate must be true or false" in done.stderr
    assert "line 18: bad row: no user" in done.stderr
    assert "line 15: " in done.stderr
    assert "404 not_found" in done.stderr

    results = read_results(output)
    assert sorted(r["line"] for r in results) == list(range(2, 302))
    ok = {r["id"]: r["name"] for r in results if r["ok"]}
    assert len(ok) == 294
    assert ok[ids[12]] == QUESTION
    for n, cid in enumerate(ids):
        if n not in {10, 11, 12, 13, 14, 15, 16}:
            assert ok[cid] == f"Ticket, #{n}"
            assert server.get_conversation(cid).name == f"Ticket, #{n}"
    assert server.get_conversation(ids[0]).name == "Ticket, #0"
    assert server.requests_received == 295
    assert server.llm_calls == 1


def test_batch_jsonl_with_transient_faults_exits_0(server, tmp_path):
    """Transient faults are retried; an all-success batch exits 0 and counts retries."""
    ids = seed(server, 200)
    for cid in ids[:6]:
        server.inject_fault(Fault.gateway(502), conversation_id=cid)
    server.inject_fault(Fault.disconnect(after_processing=True), conversation_id=ids[6])
    server.inject_fault(Fault.rate_limit(retry_after="0"), conversation_id=ids[7])
    records = [
        {"conversation_id": cid, "user": USER, "name": f"J{n}"}
        for n, cid in enumerate(ids)
    ]
    records[5] = {
        "conversation_id": ids[5],
        "user": USER,
        "auto_generate": False,
        "name": "J5",
    }
    source = write_jsonl(tmp_path / "rows.jsonl", records)
    output = tmp_path / "out.jsonl"

    done = run("batch", str(source), "--output", str(output), "--json", server=server)

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["succeeded"] == 200
    assert summary["failed"] == 0
    assert summary["retried"] == 8
    assert summary["requests"] == server.requests_received == 208
    assert summary["resume_command"] is None
    assert summary["hints"] == []
    results = read_results(output)
    assert {r["id"] for r in results} == set(ids)
    assert all(r["ok"] for r in results)
    assert {
        r["id"]: r["attempts"] for r in results if r["attempts"] != 1
    } == dict.fromkeys(ids[:8], 2)
    assert [c.name for c in server.conversations] == [f"J{n}" for n in range(200)]
    # Retries are counted through the client's on_retry hook, and shown only
    # with -v: the library's own log lines stay off standard error.
    assert "Retrying" not in done.stderr


def test_batch_jsonl_bad_lines_are_reported(server, tmp_path):
    """Lines that are not JSON objects, or hold wrong types, are reported."""
    (cid,) = seed(server, 1)
    source = tmp_path / "rows.ndjson"
    source.write_text(
        "\n".join(
            [
                json.dumps({"conversation_id": cid, "user": USER, "name": "Fine"}),
                "{not json",
                "[1, 2]",
                json.dumps({"conversation_id": 7, "user": USER, "name": "x"}),
                json.dumps({"conversation_id": cid, "user": USER, "name": 5}),
                "",
                json.dumps({"user": USER, "name": "x"}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    done = run("batch", str(source), "--no-progress", "--json", server=server)
    assert done.returncode == 1
    assert json.loads(done.stdout)["failures"] == {"bad row": 5}
    for line, text in [
        (2, "not valid JSON"),
        (3, "not a JSON object"),
        (4, "conversation_id must be a string"),
        (5, "name must be a string"),
        (7, "no conversation_id"),
    ]:
        assert f"line {line}: bad row: {text}" in done.stderr
    assert server.get_conversation(cid).name == "Fine"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),
        (1, True),
        (0, False),
        ("Yes", True),
        (" off ", False),
        ("", False),
        ("maybe", None),
        (2, None),
        (1.5, None),
    ],
)
def test_auto_generate_values(server, tmp_path, capsys, value, expected):
    """auto_generate cells accept the usual spellings of true and false."""
    (cid,) = seed(server, 1)
    record = {"conversation_id": cid, "user": USER, "name": "Given"}
    if value is not None:
        record["auto_generate"] = value
    source = write_jsonl(tmp_path / "rows.jsonl", [record])
    status = main(
        [
            "batch",
            str(source),
            "--no-progress",
            "--json",
            "--api-key",
            server.api_key,
            "--base-url",
            server.base_url,
        ]
    )
    out, err = capsys.readouterr()
    stored = server.get_conversation(cid).name
    if expected is None:
        assert status == 1
        assert json.loads(out)["failures"] == {"bad row": 1}
        assert "auto_generate must be true or false" in err
        assert server.requests_received == 0
    else:
        assert status == 0, err
        assert stored == (QUESTION if expected else "Given")
        assert server.llm_calls == int(expected)


def test_batch_reads_stdin(server):
    """FILE may be - for standard input; the format is sniffed from the content."""
    ids = seed(server, 3)
    text = "".join(
        json.dumps({"conversation_id": cid, "user": USER, "name": "Piped"}) + "\n"
        for cid in ids
    )
    done = run("batch", "-", server=server, stdin=text)
    assert done.returncode == 0, done.stderr
    assert "Summary: 3 of 3 rows renamed" in done.stdout
    assert all(c.name == "Piped" for c in server.conversations)
    # Off a terminal and without a known total, progress still counts rows.
    assert done.stderr.endswith("progress: 3 done, 0 failed\n")


def test_batch_default_user_and_explicit_format(server, tmp_path):
    """--user fills rows without a user; --format overrides the extension."""
    ids = seed(server, 4)
    source = tmp_path / "rows.txt"
    source.write_text(
        "Conversation_ID,Name,extra\n"
        + "".join(f"{cid},Via --user,1\n" for cid in ids),
        encoding="utf-8",
    )
    done = run("batch", str(source), "--format", "csv", "--user", USER, server=server)
    assert done.returncode == 0, done.stderr
    assert all(c.name == "Via --user" for c in server.conversations)
    jsonl = tmp_path / "rows.data"
    write_jsonl(jsonl, [{"conversation_id": ids[0], "user": USER, "name": "Forced"}])
    done = run("batch", str(jsonl), "--format", "jsonl", server=server)
    assert done.returncode == 0, done.stderr
    assert server.get_conversation(ids[0]).name == "Forced"


def test_batch_stops_when_the_key_is_refused(server, tmp_path):
    """A 401 stops the batch: the rest is not sent, the hint names both key sources."""
    ids = seed(server, 100)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "x", ""] for c in ids])
    output = tmp_path / "out.jsonl"
    env = cli_env(server, DIFY_API_KEY="app-notthekey")
    args = ["batch", str(source), "--concurrency", "2", "--output", str(output)]
    done = run(*args, "--json", env=env)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["stopped"].startswith(
        "the server refused the app (401 unauthorized)"
    )
    assert server.requests_received <= 4
    assert server.renames_applied == 0
    assert summary["total"] == 100
    assert summary["failed"] + summary["not_reached"] == 100
    (hint,) = summary["hints"]
    assert "DIFY_API_KEY" in hint
    assert "--api-key" in hint
    assert summary["resume_command"].endswith("--resume")
    assert "app-notthekey" not in done.stdout + done.stderr

    output.unlink()
    text = run(*args, env=env)
    assert "Stopped early: the server refused the app" in text.stdout
    assert "Hint: the server refused the API key" in text.stdout
    counts = summary_counts(text.stdout)
    assert counts["failed"] + counts["not reached"] == 100


def test_batch_rate_paces_requests(server, tmp_path):
    """--rate caps the requests per second of the whole batch."""
    ids = seed(server, 16)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "Paced", ""] for c in ids])
    done = run(
        "batch",
        str(source),
        "--rate",
        "50",
        "--concurrency",
        "16",
        "--json",
        server=server,
    )
    assert done.returncode == 0, done.stderr
    # 16 requests 20 ms apart take at least 15 gaps.
    assert json.loads(done.stdout)["elapsed"] >= 15 / 50 - 0.01


def test_batch_verbose_shows_retries_and_progress_lines(server, tmp_path):
    """-v shows each retry; off a terminal, progress is a plain counter on stderr."""
    ids = seed(server, 20)
    server.inject_fault(Fault.gateway(503), conversation_id=ids[4])
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "V", ""] for c in ids])
    done = run("batch", str(source), "-v", server=server)
    assert done.returncode == 0, done.stderr
    retry = f"Retrying POST {server.base_url}/conversations/{ids[4]}/name"
    assert retry in done.stderr
    assert "(attempt 1 failed: 503)" in done.stderr
    assert "progress: 20/20 (100%) done, 0 failed" in done.stderr
    assert "retried         1" in done.stdout
    quiet = run("batch", str(source), "--no-progress", server=server)
    assert "progress:" not in quiet.stderr


def test_batch_failures_say_what_and_after_how_many_attempts(server, tmp_path):
    """Exhausted retries are reported per row: status, timeout or connection error."""
    ids = seed(server, 5)
    server.inject_fault(Fault.gateway(502), times=2, conversation_id=ids[0])
    server.inject_fault(Fault.disconnect(), times=2, conversation_id=ids[1])
    server.inject_fault(Fault.delay(5.0), times=2, conversation_id=ids[2])
    source = tmp_path / "rows.csv"
    source.write_text(
        "\nconversation_id,user,name\n\n"
        + "".join(f"{cid},{USER},Try\n\n" for cid in ids),
        encoding="utf-8",
    )
    output = tmp_path / "fresh.jsonl"
    done = run(
        "batch",
        str(source),
        "--timeout",
        "0.3",
        "--max-retries",
        "1",
        "--output",
        str(output),
        "--resume",
        "--json",
        server=server,
    )
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["failures"] == {"502": 1, "connection error": 1, "timeout": 1}
    assert summary["succeeded"] == 2
    # Blank lines are skipped but counted: each row keeps its own line number.
    assert f"line 4: {ids[0]}: 502: " in done.stderr
    assert f"line 6: {ids[1]}: connection error: " in done.stderr
    assert f"line 8: {ids[2]}: timeout: " in done.stderr
    assert "(after 2 attempts)" in done.stderr
    failed = {r["id"]: r for r in read_results(output) if not r["ok"]}
    assert failed[ids[0]]["status"] == 502
    assert failed[ids[0]]["code"] is None
    assert failed[ids[0]]["attempts"] == 2
    assert failed[ids[2]]["error"] == "APITimeoutError"


def test_batch_counts_auto_generate_renames_left_untitled(server, tmp_path):
    """Dify keeps the old name when its LLM fails: the summary counts and explains."""
    server.llm_fails = True
    ids = seed(server, 4)
    rows = [
        [ids[0], USER, "", "true"],
        [ids[1], USER, "", "true"],
        [ids[2], USER, "Explicit", ""],
        [ids[3], USER, "New conversation", ""],  # asked for: not untitled
    ]
    source = write_csv(tmp_path / "rows.csv", rows)
    output = tmp_path / "out.jsonl"
    done = run("batch", str(source), "--output", str(output), server=server)
    assert done.returncode == 0, done.stderr
    counts = summary_counts(done.stdout)
    assert counts["succeeded"] == 4
    assert counts["untitled"] == 2
    (line,) = [x for x in done.stdout.splitlines() if "untitled" in x]
    assert "the app's system model could not generate a title" in line
    assert f"line 2: {ids[0]}: untitled" in done.stderr
    untitled = {r["id"] for r in read_results(output) if r.get("untitled")}
    assert untitled == {ids[0], ids[1]}
    assert server.llm_calls == 2

    # A title that comes back blank counts as untitled too.
    server.llm_fails = False
    blank = server.add_conversation(user=USER, messages=["   "])
    source = write_csv(tmp_path / "blank.csv", [[blank, USER, "", "yes"]])
    as_json = run("batch", str(source), "--json", server=server)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["untitled"] == 1
    assert server.get_conversation(blank).name == ""


def test_batch_stops_when_the_results_file_cannot_be_written(server, tmp_path):
    """A results file that fails mid-run (a full disk) stops the run in one line."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    ids = seed(server, 30)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "Full", ""] for c in ids])
    done = run(
        "batch",
        str(source),
        "--output",
        "/dev/full",
        "--concurrency",
        "1",
        "--json",
        server=server,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["stopped"].startswith("cannot write /dev/full: No space left")
    assert summary["not_reached"] > 0
    assert server.requests_received < 30
    assert "error: cannot write /dev/full" in done.stderr


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    saved = sys.modules.get("tqdm")
    sys.modules["tqdm"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["tqdm"]
        else:
            sys.modules["tqdm"] = saved


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counter_without_tqdm(server, tmp_path, capsys):
    """Without tqdm, a terminal gets a counter updated in place, messages above it."""
    ids = seed(server, 3)
    rows = [[ids[0], USER, "A", ""], [ids[1], "intruder", "B", ""]]
    rows.append([ids[2], USER, "C", ""])
    source = write_csv(tmp_path / "rows.csv", rows)
    terminal = _Terminal()
    with _no_tqdm(), contextlib.redirect_stderr(terminal):
        status = main(
            [
                "batch",
                str(source),
                "--concurrency",
                "1",
                "--api-key",
                server.api_key,
                "--base-url",
                server.base_url,
            ]
        )
    assert status == 1
    text = terminal.getvalue()
    assert f"\r\x1b[Kline 3: {ids[1]}: 404 not_found" in text
    assert text.endswith("\r\x1b[K3/3 (100%) done, 1 failed\n")
    assert "Summary: 2 of 3 rows renamed" in capsys.readouterr().out


def test_batch_progress_on_a_terminal(server, tmp_path):
    """On a terminal the progress is a bar (tqdm) or a counter updated in place."""
    pty = pytest.importorskip("pty")
    import fcntl  # noqa: PLC0415  (Unix only, like pty)
    import struct  # noqa: PLC0415
    import termios  # noqa: PLC0415

    ids = seed(server, 50)
    ids_rows = [[c, USER, "Tty", ""] for c in ids]
    ids_rows[3] = [ids[3], "intruder", "x", ""]
    source = write_csv(tmp_path / "rows.csv", ids_rows)
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with start(
        "batch",
        str(source),
        server=server,
        stderr=child,
        stdin=subprocess.DEVNULL,
        text=False,
    ) as process:
        os.close(child)
        shown = b""
        while True:
            ready, _, _ = select.select([parent], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            shown += chunk
        process.wait(timeout=60)
    os.close(parent)
    assert process.returncode == 1
    text = shown.decode("utf-8", "replace")
    assert "line 5: " in text
    assert "404 not_found" in text
    if importlib.util.find_spec("tqdm") is not None:
        assert "50/50" in text
        assert "100%|" in text
    else:
        assert "\r\x1b[K50/50 (100%) done, 1 failed" in text
