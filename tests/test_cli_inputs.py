"""dify-async batch: input and results-file problems are one line, before sending.

Each problem found up front exits 2 with one line on standard error, no
traceback, nothing sent, no summary, and the results file as it was. A
problem found part-way through the input is one line too, and the summary
says how far the run got.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from test_cli import (
    USER,
    assert_one_line_error,
    cli_env,
    command,
    read_results,
    run,
    seed,
    write_csv,
)

from dify_async.testing import FakeDifyServer


@pytest.fixture
def rows(server: FakeDifyServer, tmp_path: Path) -> Path:
    """A good input file of two rows."""
    ids = seed(server, 2)
    return write_csv(tmp_path / "rows.csv", [[c, USER, "Fine", ""] for c in ids])


def run_restricted(*args: str, server: FakeDifyServer) -> CompletedProcess[str]:
    """Run the command with file permissions applied, even when tests run as root.

    As root, the process runs without the capabilities that bypass file
    permissions, so that a file root may not read or write is refused.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    return subprocess.run(  # noqa: S603  (our own command line)
        [*prefix, *command(*args)],
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the input ---------------------------------------------------------------------


def test_a_missing_input_file(server, tmp_path):
    """A missing input names the file and the reason."""
    done = run("batch", str(tmp_path / "missing.csv"), server=server)
    assert_one_line_error(done, "cannot read", "missing.csv", "No such file")
    assert server.requests_received == 0


def test_a_directory_as_input(server, tmp_path):
    """A directory is not an input file."""
    done = run("batch", str(tmp_path), server=server)
    assert_one_line_error(done, f"cannot read {tmp_path}: it is a directory")


def test_an_unreadable_input_file(server, tmp_path):
    """An input the user may not read says so."""
    source = write_csv(tmp_path / "secret.csv", [["0" * 32, USER, "x", ""]])
    source.chmod(0)
    done = run_restricted("batch", str(source), server=server)
    assert_one_line_error(done, "cannot read", "secret.csv", "Permission denied")
    assert server.requests_received == 0


def test_an_input_that_fails_to_read(server):
    """An I/O error while reading the first rows is one line."""
    broken = Path("/proc/self/mem")  # reading it from offset 0 fails with EIO
    if not broken.is_file():
        pytest.skip("needs /proc/self/mem")
    done = run("batch", str(broken), server=server)
    assert_one_line_error(done, f"cannot read {broken}: Input/output error")


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"conversation_id,user,name\xff\n", "line 1, byte 26 of the line (0xFF)"),
        (
            b"conversation_id,user,name\nabcd\xe9,u,x\n",
            "line 2, byte 5 of the line (0xE9)",
        ),
        (b"\xef\xbb\xbfconversation_id\n\xc3(\n", "line 2, byte 1 of the line (0xC3)"),
    ],
)
def test_an_input_that_is_not_utf8_at_its_start(server, tmp_path, content, where):
    """A first row that is not UTF-8 is named by line and byte, with the fix."""
    source = tmp_path / "rows.csv"
    source.write_bytes(content)
    done = run("batch", str(source), server=server)
    assert_one_line_error(done, f"not UTF-8 at {where}", "save the file as UTF-8")


def test_an_input_in_utf16(server, tmp_path):
    """A UTF-16 export (Excel's 'Unicode text') is recognised as such."""
    source = tmp_path / "rows.csv"
    source.write_bytes("conversation_id,user,name\n".encode("utf-16"))
    done = run("batch", str(source), server=server)
    assert_one_line_error(done, "looks like UTF-16", "save the file as UTF-8")


def test_an_input_that_is_not_utf8_part_way(server, tmp_path):
    """Rows before an undecodable byte are renamed; then one line says why."""
    ids = seed(server, 3)
    source = tmp_path / "rows.csv"
    body = "conversation_id,user,name\n" + "".join(f"{c},{USER},Ok\n" for c in ids)
    source.write_bytes(body.encode() + b"\xff\xfe,broken\n")
    done = run("batch", str(source), "--json", server=server)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["succeeded"] == 3
    assert summary["input_error"].startswith("cannot read the input: not UTF-8")
    assert "line 5, byte 1 of the line (0xFF)" in summary["input_error"]
    (line,) = [x for x in done.stderr.splitlines() if "UTF-8" in x]
    assert line == f"error: {summary['input_error']}"
    text = run("batch", str(source), "--no-progress", server=server)
    assert "Input error: cannot read the input: not UTF-8" in text.stdout


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


def test_a_csv_that_is_broken_from_its_first_row(server, tmp_path):
    """A first CSV record the parser refuses is a usage error."""
    source = tmp_path / "rows.csv"
    source.write_text(
        f'conversation_id,user,name\n{"0" * 32},{USER},"{"x" * 200_000}"\n',
        encoding="utf-8",
    )
    done = run("batch", str(source), server=server)
    assert_one_line_error(done, "cannot read", "field larger than field limit")


def test_batch_csv_without_id_column_is_a_usage_error(server, tmp_path):
    """A CSV header without conversation_id stops before anything is sent."""
    source = tmp_path / "rows.csv"
    source.write_text("id,user,name\nabc,u,x\n", encoding="utf-8")
    for extra in ([], ["--no-progress"]):
        done = run("batch", str(source), *extra, server=server)
        assert_one_line_error(done, "no conversation_id column", "found: id, user")
    assert server.requests_received == 0


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("rows.csv", ""),
        ("rows.jsonl", ""),
        ("rows", ""),
        ("rows.csv", "conversation_id,user,name\n"),
        ("rows.csv", "\n\nconversation_id,user,name\n\n ,\n"),
        ("rows.jsonl", "\n   \n\n"),
    ],
)
def test_an_input_without_rows(server, tmp_path, name, content):
    """An input without a single row is a usage error, not an empty success."""
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    done = run("batch", str(source), server=server)
    assert_one_line_error(done, f"no rows in {source}")


def test_dev_null_and_empty_stdin_have_no_rows(server):
    """/dev/null and an empty standard input have no rows either."""
    done = run("batch", os.devnull, server=server)
    assert_one_line_error(done, f"no rows in {os.devnull}")
    piped = run("batch", "-", server=server, stdin="")
    assert_one_line_error(piped, "no rows in standard input")


# -- the results file ----------------------------------------------------------------


def test_results_in_a_folder_that_does_not_exist(server, rows, tmp_path):
    """--output in a missing folder names the folder, before anything is sent."""
    output = tmp_path / "no" / "such" / "r.jsonl"
    done = run("batch", str(rows), "--output", str(output), server=server)
    assert_one_line_error(done, f"the folder {output.parent} does not exist")
    assert server.requests_received == 0


@pytest.mark.parametrize("resume", [False, True])
def test_results_file_that_is_a_directory(server, rows, tmp_path, resume):
    """A directory as --output is refused, with or without --resume."""
    extra = ["--resume"] if resume else []
    done = run("batch", str(rows), "--output", str(tmp_path), *extra, server=server)
    assert_one_line_error(done, f"--output {tmp_path} is a directory")
    assert server.requests_received == 0


@pytest.mark.parametrize("resume", [False, True])
def test_results_file_without_permission(server, rows, tmp_path, resume):
    """A results file or folder the user may not write is refused up front."""
    locked = tmp_path / "locked"
    locked.mkdir()
    output = locked / "out.jsonl"
    if resume:
        output.write_text('{"line": 2, "id": "x", "ok": false}\n', "utf-8")
        output.chmod(0o444)
    locked.chmod(0o555)
    extra = ["--resume"] if resume else []
    try:
        done = run_restricted(
            "batch", str(rows), "--output", str(output), *extra, server=server
        )
    finally:
        locked.chmod(0o755)
    assert_one_line_error(done, f"cannot write {output}: Permission denied")
    assert server.requests_received == 0


def test_batch_refuses_to_overwrite_results(server, rows, tmp_path):
    """An existing results file is never truncated: --resume is required to reuse it."""
    output = tmp_path / "out.jsonl"
    kept = '{"line": 2, "id": "keep me", "ok": true}\n'
    output.write_text(kept, encoding="utf-8")
    done = run("batch", str(rows), "--output", str(output), server=server)
    assert_one_line_error(done, "already holds results", "--resume")
    assert output.read_text("utf-8") == kept


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize(
    "content",
    [
        b"conversation_id,user,name\n0000,u,x\n",
        b'{"conversation_id": "x"}\n',
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"notes without a line end",
        b"".join(b"{}\n" for _ in range(150)) + b'{"ok": true, "id": "x"}\n',
    ],
)
def test_results_file_that_is_not_ours(server, rows, tmp_path, resume, content):
    """A file another program wrote is neither resumed nor overwritten."""
    output = tmp_path / "precious.txt"
    output.write_bytes(content)
    extra = ["--resume"] if resume else []
    done = run("batch", str(rows), "--output", str(output), *extra, server=server)
    line = assert_one_line_error(done, str(output), "no dify-async results")
    assert ("--resume continues" in line) is resume
    assert output.read_bytes() == content
    assert server.requests_received == 0


def test_resume_from_something_that_is_not_a_file(server, rows):
    """--resume reads and cuts its file: a device is refused."""
    done = run("batch", str(rows), "--output", os.devnull, "--resume", server=server)
    assert_one_line_error(done, f"cannot resume from {os.devnull}", "not a regular")


def test_results_to_the_null_device_without_resume(server, rows):
    """Without --resume the results can be thrown away into /dev/null."""
    done = run("batch", str(rows), "--output", os.devnull, server=server)
    assert done.returncode == 0, done.stderr
    assert server.renames_applied == 2


def test_a_resumed_file_that_only_holds_a_torn_line_is_ours(server, rows, tmp_path):
    """A run killed while writing its first line can be resumed."""
    output = tmp_path / "out.jsonl"
    output.write_text('{"line": 2, "id": "4', encoding="utf-8")
    done = run("batch", str(rows), "--output", str(output), "--resume", server=server)
    assert done.returncode == 0, done.stderr
    assert len(read_results(output)) == 2
