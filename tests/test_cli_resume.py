"""dify-async batch: killed, interrupted and resumed runs."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from test_cli import (
    USER,
    cli_env,
    line_count,
    read_results,
    run,
    run_words,
    seed,
    start,
    summary_counts,
    wait_for,
    write_csv,
)

from dify_async.cli import main
from dify_async.testing import FakeDifyServer, Fault


def start_batch(
    source: Path,
    output: Path,
    *flags: str,
    server: FakeDifyServer,
    concurrency: int = 4,
    **options: Any,
) -> subprocess.Popen[Any]:
    """Start ``batch SOURCE --output OUTPUT --concurrency N FLAGS`` in a child."""
    return start(
        "batch",
        str(source),
        "--output",
        str(output),
        "--concurrency",
        str(concurrency),
        *flags,
        server=server,
        **options,
    )


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

    with start_batch(
        source,
        output,
        server=server,
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
        with start_batch(
            source,
            output,
            server=server,
            concurrency=concurrency,
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
        with start_batch(source, output, "--json", server=server) as process:
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
        assert summary["in_flight"] <= 4
        reached = summary["succeeded"] + summary["in_flight"]
        assert reached + summary["not_reached"] == summary["total"] == 400
        assert summary["resume_command"].endswith(" --resume")

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


def test_ctrl_c_counts_rows_in_flight_and_prints_the_resume_command(server, tmp_path):
    """After SIGINT the summary accounts for every row and says how to resume."""
    ids = seed(server, 60)
    # Four rows hang before the server touches them: with four workers, the
    # run is stuck with exactly those in flight when it is interrupted.
    hanging = ids[20:24]
    for cid in hanging:
        server.inject_fault(Fault.delay(60.0), conversation_id=cid)
    rows = [[c, USER, f"I{n}", ""] for n, c in enumerate(ids)]
    rows[5] = ["not-a-uuid", USER, "x", ""]
    source = write_csv(tmp_path / "rows.csv", rows)
    output = tmp_path / "out.jsonl"
    with start_batch(source, output, "--no-progress", server=server) as process:
        wait_for(lambda: server.requests_received == 23 and line_count(output) == 20)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "Summary: 19 of 60 rows renamed" in stdout
    counts = summary_counts(stdout)
    assert counts["succeeded"] == 19
    assert counts["failed"] == 1  # the bad row
    assert counts["in flight"] == 4
    assert counts["not reached"] == 60 - 24
    assert "(outcome unknown; a resume will retry them)" in stdout
    assert "Interrupted: rows not reached were not attempted." in stdout
    (line,) = [x for x in stdout.splitlines() if x.startswith("To resume: ")]
    words = shlex.split(line.removeprefix("To resume: "))
    assert words == [
        "python",
        "-m",
        "dify_async",
        "batch",
        str(source),
        "--output",
        str(output),
        "--concurrency",
        "4",
        "--no-progress",
        "--resume",
    ]

    resumed = run_words(words, server)
    assert resumed.returncode == 1  # the bad row is still bad
    assert "Summary: 59 of 60 rows renamed" in resumed.stdout
    assert summary_counts(resumed.stdout)["already done"] == 19
    results = read_results(output)
    assert Counter(r["id"] for r in results if r["ok"]) == Counter(
        c for n, c in enumerate(ids) if n != 5
    )
    for n, cid in enumerate(ids):
        if n != 5:
            stored = server.get_conversation(cid)
            assert stored.name == f"I{n}"
            assert stored.rename_count == 1


def test_the_resume_command_never_shows_the_key(server, tmp_path):
    """A key given with --api-key is left out of the resume command."""
    ids = seed(server, 2)
    source = write_csv(tmp_path / "rows.csv", [[c, "intruder", "x", ""] for c in ids])
    output = tmp_path / "out.jsonl"
    env = cli_env(None, DIFY_BASE_URL=server.base_url)
    for spelling in (["--api-key", server.api_key], [f"--api={server.api_key}"]):
        output.unlink(missing_ok=True)
        done = run("batch", str(source), *spelling, "--output", str(output), env=env)
        assert done.returncode == 1
        assert server.api_key not in done.stdout + done.stderr
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("To resume: ")]
        assert "--api" not in line
        assert "Hint: the command to resume leaves out --api-key" in done.stdout


def test_resume_commands_quote_their_words(server, tmp_path):
    """The resume command is shell-quoted: paths with spaces survive."""
    ids = seed(server, 2)
    folder = tmp_path / "my runs"
    folder.mkdir()
    source = write_csv(folder / "rows.csv", [[c, "intruder", "x", ""] for c in ids])
    output = folder / "out put.jsonl"
    done = run("batch", str(source), "--output", str(output), server=server)
    assert done.returncode == 1
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("To resume: ")]
    assert f"'{output}'" in line
    words = shlex.split(line.removeprefix("To resume: "))
    assert words[3:] == ["batch", str(source), "--output", str(output), "--resume"]
    again = run_words(words, server)
    assert "To resume: " in again.stdout
    assert again.stdout.count("--resume") == 1  # not added twice
    no_output = run("batch", str(source), server=server)
    assert "To resume" not in no_output.stdout


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


def test_torn_results_line_is_cut_off(server, tmp_path, capsys):
    """A results file whose last line was torn by a kill is cut back to whole lines."""
    ids = seed(server, 2)
    source = write_csv(tmp_path / "rows.csv", [[c, USER, "Torn", ""] for c in ids])
    output = tmp_path / "out.jsonl"
    whole = json.dumps({"line": 2, "id": ids[0], "ok": True}) + "\n"
    output.write_text(whole + '{"line": 3, "id": "12', encoding="utf-8")
    status = main(
        [
            "batch",
            str(source),
            "--output",
            str(output),
            "--resume",
            "--api-key",
            server.api_key,
            "--base-url",
            server.base_url,
        ]
    )
    assert status == 0
    text = output.read_text("utf-8")
    assert text.startswith(whole)
    assert [r["id"] for r in read_results(output)] == [ids[0], ids[1]]
    assert summary_counts(capsys.readouterr().out)["already done"] == 1
    assert server.requests_by_conversation == Counter({ids[1]: 1})
