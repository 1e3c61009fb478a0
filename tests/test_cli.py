"""The dify-async command line, run as a real process against the fake server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.util
import io
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dify_async import __version__, _cli
from dify_async.testing import FakeDifyServer, Fault

USER = "user-7"
QUESTION = "Where is my parcel?"


@pytest.fixture
def server() -> Iterator[FakeDifyServer]:
    """A fake Dify server on its own thread, reachable from a child process."""
    with FakeDifyServer() as fake:
        yield fake


def cli_env(server: FakeDifyServer | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_")}
    if server is not None:
        env["DIFY_API_KEY"] = server.api_key
        env["DIFY_BASE_URL"] = server.base_url
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dify_async", *args]


def run(
    *args: str,
    server: FakeDifyServer | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  (our own command line)
        command(*args),
        env=cli_env(server) if env is None else env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seed(server: FakeDifyServer, count: int) -> list[str]:
    return [
        server.add_conversation(user=USER, messages=[QUESTION]) for _ in range(count)
    ]


def write_csv(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["conversation_id", "user", "name", "auto_generate"])
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: Sequence[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    """Poll until *predicate* holds (waiting for a state, not measuring speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def line_count(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


# -- rename ----------------------------------------------------------------------


def test_rename_prints_the_renamed_conversation(server):
    """rename prints the conversation as the server stored it."""
    cid = server.add_conversation(
        user=USER, inputs={"order": 42}, introduction="Hello! Ask me anything."
    )
    done = run("rename", cid, "--user", USER, "--name", "Parcel  lost ", server=server)
    assert done.returncode == 0, done.stderr
    assert f"Renamed conversation {cid}" in done.stdout
    assert '"Parcel  lost "' in done.stdout
    assert '{"order": 42}' in done.stdout
    assert "Hello! Ask me anything." in done.stdout
    assert " UTC" in done.stdout
    assert server.get_conversation(cid).name == "Parcel  lost "
    assert server.api_key not in done.stdout + done.stderr


def test_rename_json_prints_the_servers_fields(server):
    """rename --json prints the conversation as JSON, timestamps in unix seconds."""
    cid = server.add_conversation(
        user=USER, inputs={"city": "Oslo"}, created_at=1700000000
    )
    done = run(
        "rename", cid.upper(), "--user", USER, "--name", "Oslo", "--json", server=server
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["id"] == cid
    assert data["name"] == "Oslo"
    assert data["inputs"] == {"city": "Oslo"}
    assert data["created_at"] == 1700000000
    assert isinstance(data["updated_at"], int)


def test_rename_auto_generate(server):
    """rename --auto-generate asks the server for a title."""
    (cid,) = seed(server, 1)
    done = run("rename", cid, "--user", USER, "--auto-generate", server=server)
    assert done.returncode == 0, done.stderr
    assert "Generated a name for" in done.stdout
    assert QUESTION in done.stdout
    assert server.llm_calls == 1


def test_rename_failure_exits_1_and_says_why(server):
    """A server refusal exits 1 with its status and code, as text or JSON."""
    (cid,) = seed(server, 1)
    done = run("rename", cid, "--user", "someone-else", "--name", "x", server=server)
    assert done.returncode == 1
    assert "404 not_found" in done.stderr
    as_json = run(
        "rename", cid, "--user", "someone-else", "--name", "x", "--json", server=server
    )
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "error": "NotFoundError",
        "status": 404,
        "code": "not_found",
        "message": "Conversation Not Exists.",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rename", "not-a-uuid", "--user", "u", "--name", "x"], "UUID"),
        (["rename", "0" * 32, "--user", " ", "--name", "x"], "user"),
        (["rename", "0" * 32, "--user", "u"], "--name"),
        (
            ["rename", "0" * 32, "--user", "u", "--name", "x", "--auto-generate"],
            "not allowed",
        ),
        (["batch", "rows.csv", "--resume"], "--resume needs --output"),
        (["batch", "rows.csv", "--concurrency", "0"], "at least 1"),
        (["batch", "rows.csv", "--concurrency", "many"], "not an integer"),
        (["batch", "rows.csv", "--max-retries", "two"], "not an integer"),
        (["batch", "rows.csv", "--timeout", "inf"], "positive number"),
        (["batch", "rows.csv", "--api-key", "app key with spaces"], "api_key"),
        (["batch", "rows.csv", "--rate", "fast"], "not a number"),
        (["batch", "rows.csv", "--max-retries", "-1"], "negative"),
        (["demo", "--count", "3"], "at least 10"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(server, monkeypatch, capsys, args, message):
    """Bad arguments exit 2 with a message, before anything is sent."""
    monkeypatch.setenv("DIFY_API_KEY", server.api_key)
    monkeypatch.setenv("DIFY_BASE_URL", server.base_url)
    with pytest.raises(SystemExit) as exited:
        _cli.main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert server.requests_received == 0


def test_missing_api_key_is_a_usage_error(tmp_path):
    """Without --api-key or DIFY_API_KEY the command refuses to start."""
    rows = write_csv(tmp_path / "rows.csv", [["0" * 32, "u", "x", ""]])
    for args in (
        ["rename", "0" * 32, "--user", "u", "--name", "x"],
        ["batch", str(rows)],
    ):
        done = run(*args, env=cli_env(None))
        assert done.returncode == 2
        assert "DIFY_API_KEY" in done.stderr


def test_api_key_and_base_url_flags_override_the_environment(server):
    """--api-key and --base-url win over the environment; the key is never printed."""
    (cid,) = seed(server, 1)
    env = cli_env(
        None, DIFY_API_KEY="app-wrongwrongwrong", DIFY_BASE_URL="http://127.0.0.1:9/v1"
    )
    done = run(
        "rename",
        cid,
        "--user",
        USER,
        "--name",
        "Flags",
        "--api-key",
        server.api_key,
        "--base-url",
        server.base_url,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert server.api_key not in done.stdout + done.stderr
    refused = run(
        "rename",
        cid,
        "--user",
        USER,
        "--name",
        "x",
        "--api-key",
        "app-secretsecret",
        "--base-url",
        server.base_url,
        env=env,
    )
    assert refused.returncode == 1
    assert "401 unauthorized" in refused.stderr
    assert "app-secretsecret" not in refused.stdout + refused.stderr


def test_version_and_help():
    """--version names the package version; python -m dify_async has help."""
    done = run("--version", env=cli_env(None))
    assert done.returncode == 0
    assert __version__ in done.stdout
    helped = run("batch", "--help", env=cli_env(None))
    assert "--resume" in helped.stdout


# -- batch -----------------------------------------------------------------------


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
    assert summary["rows"] == 300
    assert summary["succeeded"] == 294
    assert summary["failures"] == {"bad row": 5, "404 not_found": 1}
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
    results = read_results(output)
    assert {r["id"] for r in results} == set(ids)
    assert all(r["ok"] for r in results)
    assert {
        r["id"]: r["attempts"] for r in results if r["attempts"] != 1
    } == dict.fromkeys(ids[:8], 2)
    assert [c.name for c in server.conversations] == [f"J{n}" for n in range(200)]


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


def test_batch_csv_without_id_column_is_a_usage_error(server, tmp_path):
    """A CSV header without conversation_id stops before anything is sent."""
    source = tmp_path / "rows.csv"
    source.write_text("id,user,name\nabc,u,x\n", encoding="utf-8")
    for extra in ([], ["--no-progress"]):
        done = run("batch", str(source), *extra, server=server)
        assert done.returncode == 2
        assert "no conversation_id column" in done.stderr
    assert server.requests_received == 0


def test_batch_unreadable_input_is_a_usage_error(server, tmp_path):
    """A missing input file exits 2."""
    done = run("batch", str(tmp_path / "missing.csv"), server=server)
    assert done.returncode == 2
    assert "cannot read" in done.stderr


def test_batch_input_that_breaks_mid_way_is_reported(server, tmp_path):
    """Rows before an undecodable byte are renamed; then the run fails, saying why."""
    ids = seed(server, 3)
    source = tmp_path / "rows.csv"
    body = "conversation_id,user,name\n" + "".join(f"{c},{USER},Ok\n" for c in ids)
    source.write_bytes(body.encode() + b"\xff\xfe,broken\n")
    done = run("batch", str(source), "--json", server=server)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["succeeded"] == 3
    assert "cannot read the input" in summary["input_error"]


def test_batch_refuses_to_overwrite_results(server, tmp_path):
    """An existing results file is never truncated: --resume is required to reuse it."""
    (cid,) = seed(server, 1)
    source = write_csv(tmp_path / "rows.csv", [[cid, USER, "x", ""]])
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": "keep me"}\n', encoding="utf-8")
    done = run("batch", str(source), "--output", str(output), server=server)
    assert done.returncode == 2
    assert "--resume" in done.stderr
    assert output.read_text("utf-8") == '{"id": "keep me"}\n'


def test_batch_stops_when_the_key_is_refused(server, tmp_path):
    """A 401 stops the batch: the other rows are not sent, and the run exits 1."""
    ids = seed(server, 100)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "x", ""] for c in ids])
    env = cli_env(server, DIFY_API_KEY="app-notthekey")
    done = run("batch", str(source), "--concurrency", "2", "--json", env=env)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["stopped"].startswith(
        "the server refused the app (401 unauthorized)"
    )
    assert server.requests_received <= 4
    assert server.renames_applied == 0


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
    assert f"Retrying POST {server.base_url}/conversations/{ids[4]}/name" in done.stderr
    assert "progress: 20/20 (100%) done, 0 failed" in done.stderr
    assert "retried         1" in done.stdout
    quiet = run("batch", str(source), "--no-progress", server=server)
    assert "progress:" not in quiet.stderr


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
    with subprocess.Popen(  # noqa: S603
        command("batch", str(source)),
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=child,
        stdin=subprocess.DEVNULL,
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


# -- killed and resumed --------------------------------------------------------------


def test_batch_killed_then_resumed_renames_each_row_exactly_once(server, tmp_path):
    """After SIGKILL and --resume, each row is renamed once and recorded once."""
    ids = seed(server, 200)
    # Rows 100-103 hang before the server touches them, so that every worker
    # is stuck there, with rows 0-99 renamed and recorded, when the run is killed.
    for cid in ids[100:104]:
        server.inject_fault(Fault.delay(60.0), conversation_id=cid)
    source = write_csv(
        tmp_path / "rows.csv", [[c, USER, f"R{n}", ""] for n, c in enumerate(ids)]
    )
    output = tmp_path / "out.jsonl"

    with subprocess.Popen(  # noqa: S603
        command("batch", str(source), "--output", str(output), "--concurrency", "4"),
        env=cli_env(server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        wait_for(lambda: server.requests_received == 104 and line_count(output) == 100)
        process.send_signal(signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert server.renames_applied == 100
    # A kill can also tear the line being written: resume must cope with that.
    with output.open("a", encoding="utf-8") as stream:
        stream.write('{"line": 150, "id": "')

    done = run(
        "batch",
        str(source),
        "--output",
        str(output),
        "--resume",
        "--json",
        server=server,
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["skipped"] == 100
    assert summary["succeeded"] == 100
    results = read_results(output)  # every line is whole JSON again
    assert len(results) == 200
    assert all(r["ok"] for r in results)
    assert Counter(r["id"] for r in results) == Counter(ids)
    for n, cid in enumerate(ids):
        stored = server.get_conversation(cid)
        assert stored.name == f"R{n}"
        assert stored.rename_count == 1
    assert server.requests_by_conversation == Counter(
        {cid: 2 if n in range(100, 104) else 1 for n, cid in enumerate(ids)}
    )


def test_batch_killed_mid_flight_loses_nothing_finished(tmp_path):
    """A run killed with renames in flight resumes to one success line per id."""
    concurrency = 8
    with FakeDifyServer(latency=0.05) as server:  # a full run takes about 2 s
        ids = seed(server, 300)
        source = write_csv(
            tmp_path / "rows.csv", [[c, USER, f"M{n}", ""] for n, c in enumerate(ids)]
        )
        output = tmp_path / "out.jsonl"
        with subprocess.Popen(  # noqa: S603
            command(
                "batch",
                str(source),
                "--output",
                str(output),
                "--concurrency",
                str(concurrency),
            ),
            env=cli_env(server),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as process:
            wait_for(lambda: line_count(output) >= 50)
            process.send_signal(signal.SIGKILL)
        recorded = {r["id"] for r in read_results(output)}
        # Everything recorded was renamed; at most the in-flight ones were
        # renamed without being recorded.
        assert all(
            server.get_conversation(cid).name.startswith("M") for cid in recorded
        )
        assert server.renames_applied - len(recorded) <= concurrency
        assert len(recorded) < 300

        server.latency = 0.0
        done = run(
            "batch", str(source), "--output", str(output), "--resume", server=server
        )
        assert done.returncode == 0, done.stderr
        results = read_results(output)
        assert Counter(r["id"] for r in results if r["ok"]) == Counter(ids)
        assert len(results) == 300
        renamed_twice = [c for c in server.conversations if c.rename_count > 1]
        assert len(renamed_twice) <= concurrency
        assert [c.name for c in server.conversations] == [f"M{n}" for n in range(300)]


def test_batch_interrupted_by_sigterm_records_what_finished(tmp_path):
    """SIGTERM stops a batch cleanly: a summary, exit 143, and a resumable file."""
    with FakeDifyServer(latency=0.05) as server:  # a full run takes about 5 s
        ids = seed(server, 400)
        source = write_csv(tmp_path / "rows.csv", [[c, USER, "T", ""] for c in ids])
        output = tmp_path / "out.jsonl"
        with subprocess.Popen(  # noqa: S603
            command(
                "batch",
                str(source),
                "--output",
                str(output),
                "--json",
                "--concurrency",
                "4",
            ),
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            wait_for(lambda: line_count(output) >= 20)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 128 + signal.SIGTERM
        assert "Traceback" not in stderr
        assert "Task was destroyed" not in stderr
        summary = json.loads(stdout)
        assert summary["interrupted"] is True
        assert 20 <= summary["succeeded"] < 400
        assert len(read_results(output)) == summary["succeeded"]
        # At most the renames in flight when the signal came went unrecorded.
        assert server.renames_applied - summary["succeeded"] <= 4

        server.latency = 0.0
        done = run(
            "batch",
            str(source),
            "--output",
            str(output),
            "--resume",
            "--json",
            server=server,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["skipped"] == summary["succeeded"]
        assert Counter(r["id"] for r in read_results(output)) == Counter(ids)


def test_resume_reads_only_successes(server, tmp_path):
    """--resume retries rows recorded as failures and ignores unreadable lines."""
    ids = seed(server, 4)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "Again", ""] for c in ids])
    output = tmp_path / "out.jsonl"
    output.write_text(
        json.dumps({"id": ids[0], "ok": True, "name": "Again"})
        + "\n"
        + json.dumps({"id": ids[1], "ok": False, "status": 503})
        + "\n"
        + "garbage\n"
        + json.dumps({"id": "not-a-uuid", "ok": True})
        + "\n"
        + json.dumps([ids[2]])
        + "\n",
        encoding="utf-8",
    )
    done = run(
        "batch",
        str(source),
        "--output",
        str(output),
        "--resume",
        "--json",
        server=server,
    )
    assert done.returncode == 0, done.stderr
    assert "2 line(s)" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["skipped"] == 1
    assert summary["succeeded"] == 3
    assert server.requests_by_conversation[ids[0]] == 0


# -- demo --------------------------------------------------------------------------


def test_demo_renames_everything_and_checks_the_server():
    """The demo exits 0, shows the auto_generate, the 404 and a server check."""
    done = run("demo", "--count", "150", "--concurrency", "16", env=cli_env(None))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "auto_generate" in done.stdout
    assert "404 not_found: Conversation Not Exists." in done.stdout
    assert "Summary: 149 of 150 rows renamed" in done.stdout
    assert "Everything behaved as expected" in done.stdout
    assert "UNEXPECTED" not in done.stdout


# -- in-process checks of the building blocks ------------------------------------------


def test_main_returns_the_exit_status(server, tmp_path, capsys):
    """main() can be called from Python; it returns the status instead of exiting."""
    (cid,) = seed(server, 1)
    status = _cli.main(
        [
            "rename",
            cid,
            "--user",
            USER,
            "--name",
            "In process",
            "--json",
            "--api-key",
            server.api_key,
            "--base-url",
            server.base_url,
            "--timeout",
            "5",
        ]
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out)["name"] == "In process"
    with pytest.raises(SystemExit) as exited:
        _cli.main(["rename", cid, "--user", USER, "--name", "x", "--timeout", "-1"])
    assert exited.value.code == 2


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
def test_auto_generate_values(value, expected):
    """auto_generate cells accept the usual spellings of true and false."""
    assert _cli._parse_flag(value) is expected


def test_torn_results_line_is_cut_off(tmp_path):
    """A results file whose last line was torn by a kill is cut back to whole lines."""
    output = tmp_path / "out.jsonl"
    whole = (
        json.dumps({"id": "3f2c1a52-0b6f-4e8b-9b7e-7b1f0b3f3c11", "ok": True}) + "\n"
    )
    output.write_text(whole + '{"id": "12', encoding="utf-8")
    finished, unreadable = _cli._load_finished(output)
    assert len(finished) == 1
    assert unreadable == 0
    assert output.read_text("utf-8") == whole


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


def test_progress_counter_without_tqdm():
    """Without tqdm, a terminal gets a counter updated in place, messages above it."""
    stream = _Terminal()
    with _no_tqdm():
        progress = _cli._Progress(3, enabled=True, stream=stream)
        progress.advance()
        progress.message("line 2: oops")
        progress.advance(failed=True)
        progress.advance()
        progress.close()
    text = stream.getvalue()
    assert "\r\x1b[Kline 2: oops\n" in text
    assert text.endswith("\r\x1b[K3/3 (100%) done, 1 failed\n")


def test_progress_lines_without_a_known_total():
    """Off a terminal and without a total (stdin), progress still counts rows."""
    stream = io.StringIO()
    progress = _cli._Progress(None, enabled=True, stream=stream)
    for _ in range(3):
        progress.advance()
    progress.close()
    assert stream.getvalue().endswith("progress: 3 done, 0 failed\n")


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


def test_batch_of_an_empty_file_succeeds(server, tmp_path):
    """An empty input renames nothing and exits 0."""
    source = tmp_path / "rows.csv"
    source.write_text("", encoding="utf-8")
    done = run("batch", str(source), server=server)
    assert done.returncode == 0, done.stderr
    assert "Summary: 0 of 0 rows renamed" in done.stdout


def test_batch_input_that_is_not_utf8_from_the_start(server, tmp_path):
    """An input whose first line is not UTF-8 is a usage error naming the line."""
    source = tmp_path / "rows.csv"
    source.write_bytes(b"conversation_id,user,name\xff\n")
    done = run("batch", str(source), server=server)
    assert done.returncode == 2
    assert "line 1 is not valid UTF-8" in done.stderr


def test_batch_csv_that_breaks_mid_way(server, tmp_path):
    """A CSV record the parser refuses ends the run after the rows before it."""
    ids = seed(server, 2)
    source = tmp_path / "rows.csv"
    source.write_text(
        "conversation_id,user,name\n"
        + "".join(f"{cid},{USER},Before\n" for cid in ids)
        + f'{ids[0]},{USER},"{"x" * 200_000}"\n',
        encoding="utf-8",
    )
    done = run("batch", str(source), "--json", server=server)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["succeeded"] == 2
    assert "field larger than field limit" in summary["input_error"]
    assert "after line 3" in summary["input_error"]


def test_rename_interrupted_with_ctrl_c(server):
    """Ctrl-C during a rename exits 130 with a short message, no traceback."""
    (cid,) = seed(server, 1)
    server.inject_fault(Fault.delay(30.0), conversation_id=cid)
    with subprocess.Popen(  # noqa: S603
        command("rename", cid, "--user", USER, "--name", "Never"),
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        wait_for(lambda: server.requests_received == 1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


def test_demo_interrupted_with_ctrl_c():
    """Ctrl-C stops the demo cleanly with its summary so far."""
    with subprocess.Popen(  # noqa: S603
        command("demo", "--count", "2000", "--rate", "200", "--no-progress"),
        env=cli_env(None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("  also"):
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Interrupted: rows not reached were not attempted." in stdout
    assert "Traceback" not in stderr


def test_demo_reports_what_did_not_go_as_expected(capsys):
    """The demo checks its numbers against the server and says what is off."""
    with FakeDifyServer() as server:
        server.llm_fails = True  # auto_generate keeps the old name, answers 200
        demo = _cli._Demo(server)
        demo.seed(20)
        demo.inject(random.Random(1))  # noqa: S311
        args = argparse.Namespace(
            concurrency=4, rate=1000.0, no_progress=True, verbose=False
        )
        status = asyncio.run(_cli._demo(args, demo))
        out = capsys.readouterr().out
        assert status == 1
        assert "max rate     1000 requests/s" in out
        assert "UNEXPECTED: auto_generate stored 'New conversation'" in out

        # Checked against an empty run, everything is off, and says so.
        late = _cli._Demo(server)
        late.requests = demo.requests
        late.injected = 0
        _, problems = late.check(_cli._Summary(requests=1))
    text = "\n".join(problems)
    assert "20 renames have no outcome" in text
    assert "the rename as the wrong user did not end in a 404" in text
    assert "is named" in text
    assert "the server received" in text
    assert "the client counted 1 requests" in text
    assert "failures: {}" in text


def test_retry_counter_counts_only_retries_of_renames():
    """Only the client's retry lines count as retries; every line can be echoed."""
    shown: list[str] = []
    cid = "3f2c1a52-0b6f-4e8b-9b7e-7b1f0b3f3c11"
    logger = logging.getLogger("dify_async")
    with _cli._counting_retries(shown.append) as counter:
        logger.warning("Retrying POST http://h/v1/conversations/%s/name in 0.1 s", cid)
        logger.warning("Something else entirely")
    logger.warning("Retrying POST http://h/v1/conversations/%s/name in 0.1 s", cid)
    assert counter.total == 1
    assert counter.take(cid.upper()) == 1
    assert counter.take(cid) == 0
    assert len(shown) == 2


def test_summary_text_names_how_the_run_ended():
    """The text summary says when a run stopped early, was interrupted, or broke off."""
    summary = _cli._Summary(
        rows=3,
        succeeded=1,
        skipped=1,
        stopped="the key was refused",
        interrupted=2,
        input_error="line 9 is not valid UTF-8",
    )
    summary.failures["bad row"] += 1
    text = "\n".join(summary.lines())
    assert "already done" in text
    assert "Stopped early: the key was refused" in text
    assert "Interrupted" in text
    assert "Input error: line 9 is not valid UTF-8" in text
    assert _cli._exit_status(summary) == 130
    assert not summary.all_ok
