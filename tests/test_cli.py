"""The dify-async command line: rename, usage errors, hints and the demo.

Every test goes through ``main()`` or runs the command as a real process
against the fake server. The other ``test_cli_*.py`` files import the helpers
defined here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from dify_async import __version__
from dify_async.cli import main
from dify_async.testing import FakeDifyServer, Fault

USER = "user-7"
QUESTION = "Where is my parcel?"


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


def start(
    *args: str, server: FakeDifyServer | None, **options: Any
) -> subprocess.Popen[Any]:
    """Start the command line in a child process; output piped, as text.

    *options* go to :class:`subprocess.Popen` and replace those defaults.
    """
    defaults: dict[str, Any] = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "text": True,
    }
    return subprocess.Popen(  # noqa: S603  (our own command line)
        command(*args), env=cli_env(server), **{**defaults, **options}
    )


def run_words(
    words: Sequence[str], server: FakeDifyServer
) -> subprocess.CompletedProcess[str]:
    """Run a command line printed by the CLI (``python -m dify_async ...``)."""
    assert list(words[:3]) == ["python", "-m", "dify_async"]
    return run(*words[3:], server=server)


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


_COUNT_LINE = re.compile(r"^ {2,}(\S(?:.*?\S)?) {2,}([\d,]+)(?: {2}\(.*\))?$")


def summary_counts(text: str) -> dict[str, int]:
    """The counts of a text summary, by label (``{"succeeded": 3, ...}``)."""
    counts = {}
    for line in text.splitlines():
        match = _COUNT_LINE.match(line)
        if match and not line.startswith("  requests received"):
            counts[match[1]] = int(match[2].replace(",", ""))
    return counts


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command stopped with exit 2 and one line on stderr, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("python -m dify_async: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


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
    assert data["status"] == "normal"
    assert data["created_at"] == 1700000000
    assert isinstance(data["updated_at"], int)


def test_rename_auto_generate(server):
    """rename --auto-generate asks the server for a title."""
    (cid,) = seed(server, 1)
    done = run("rename", cid, "--user", USER, "--auto-generate", server=server)
    assert done.returncode == 0, done.stderr
    assert "Generated a name for" in done.stdout
    assert QUESTION in done.stdout
    assert "untitled" not in done.stderr
    assert server.llm_calls == 1


def test_rename_auto_generate_that_gets_no_title_says_why(server):
    """When the server's LLM call fails, Dify keeps the name: rename says so."""
    (cid,) = seed(server, 1)
    server.llm_fails = True
    done = run("rename", cid, "--user", USER, "--auto-generate", server=server)
    assert done.returncode == 0, done.stderr
    assert '"New conversation"' in done.stdout
    assert "the app's system model could not generate a title" in done.stderr
    assert server.llm_calls == 1


def test_rename_failure_exits_1_and_says_why(server):
    """A server refusal exits 1 with its status and code, as text or JSON."""
    (cid,) = seed(server, 1)
    done = run("rename", cid, "--user", "someone-else", "--name", "x", server=server)
    assert done.returncode == 1
    assert "404 not_found" in done.stderr
    assert "hint" not in done.stderr
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


def test_rename_connection_failure_has_no_status(server):
    """A failure without an HTTP answer is recorded with no status or code."""
    (cid,) = seed(server, 1)
    server.inject_fault(Fault.disconnect(), conversation_id=cid)
    done = run(
        "rename",
        cid,
        "--user",
        USER,
        "--name",
        "x",
        "--max-retries",
        "0",
        "--json",
        server=server,
    )
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["error"] == "APIConnectionError"
    assert record["status"] is None
    assert record["code"] is None
    assert "connection error: " in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rename", "not-a-uuid", "--user", "u", "--name", "x"], "UUID"),
        (["rename", "0" * 32, "--user", " ", "--name", "x"], "--user"),
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
        (["batch", "rows.csv", "--api-key", "app key with spaces"], "--api-key"),
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
        main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert server.requests_received == 0


@pytest.mark.parametrize(
    ("options", "says", "never"),
    [
        (["--base-url", "ftp://dify.example.com/v1"], "--base-url must be", "base_url"),
        (
            ["--base-url", "https://me:secret@dify.example.com/v1"],
            "pass the key as --api-key",
            "api_key",
        ),
        (["--api-key", "app-bad key"], "--api-key contains", "api_key"),
    ],
)
def test_messages_name_the_options_not_the_parameters(
    monkeypatch, capsys, options, says, never
):
    """The client's refusals are told with the CLI's option names."""
    monkeypatch.setenv("DIFY_API_KEY", "app-fine")
    with pytest.raises(SystemExit) as exited:
        main(["rename", "0" * 32, "--user", "u", "--name", "x", *options])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert never not in err
    assert "secret" not in err
    assert "app-bad key" not in err


def test_missing_api_key_is_a_usage_error(tmp_path):
    """Without --api-key or DIFY_API_KEY the command refuses to start."""
    rows = write_csv(tmp_path / "rows.csv", [["0" * 32, "u", "x", ""]])
    for args in (
        ["rename", "0" * 32, "--user", "u", "--name", "x"],
        ["batch", str(rows)],
    ):
        done = run(*args, env=cli_env(None))
        assert_one_line_error(done, "DIFY_API_KEY", "--api-key")
        empty = run(*args, env=cli_env(None, DIFY_API_KEY=""))
        assert_one_line_error(empty, "no API key", "DIFY_API_KEY", "--api-key")


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
    # A refused key gets a hint naming both ways to give one.
    hint = refused.stderr.splitlines()[-1]
    assert hint.startswith("hint: ")
    assert "DIFY_API_KEY" in hint
    assert "--api-key" in hint
    assert "app-secretsecret" not in refused.stdout + refused.stderr


def test_https_to_a_plain_http_server_suggests_http(server):
    """A TLS failure against https:// asks whether the server is plain HTTP."""
    (cid,) = seed(server, 1)
    https = server.base_url.replace("http://", "https://")
    done = run(
        "rename",
        cid,
        "--user",
        USER,
        "--name",
        "x",
        "--base-url",
        https,
        "--max-retries",
        "0",
        server=server,
    )
    assert done.returncode == 1
    assert "connection error" in done.stderr
    assert f"hint: is the server plain HTTP? try --base-url {server.base_url}" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_a_base_url_without_v1_gets_the_hint(server):
    """A base URL that misses /v1 is told to add it, in the CLI's terms."""
    (cid,) = seed(server, 1)
    root = server.base_url.removesuffix("/v1")
    done = run(
        "rename", cid, "--user", USER, "--name", "x", "--base-url", root, server=server
    )
    assert done.returncode == 1
    assert "404" in done.stderr
    assert "--base-url ends in /v1" in done.stderr
    assert "base_url" not in done.stderr


def test_version_and_help():
    """--version names the package version; help lists options but not --debug."""
    done = run("--version", env=cli_env(None))
    assert done.returncode == 0
    assert __version__ in done.stdout
    helped = run("batch", "--help", env=cli_env(None))
    assert "--resume" in helped.stdout
    assert "--debug" not in helped.stdout


def test_the_console_script_is_the_cli_package():
    """The installed dify-async command runs dify_async.cli:main."""
    (script,) = entry_points(group="console_scripts", name="dify-async")
    assert script.value == "dify_async.cli:main"
    assert script.load() is main


def test_debug_shows_the_traceback_that_is_otherwise_hidden(tmp_path):
    """The hidden --debug re-raises an input problem; without it, one line."""
    missing = str(tmp_path / "missing.csv")
    env = cli_env(None, DIFY_API_KEY="app-anything")
    assert_one_line_error(run("batch", missing, env=env), "missing.csv")
    debug = run("batch", missing, "--debug", env=env)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "UsageError" in debug.stderr


def test_main_returns_the_exit_status(server, capsys):
    """main() can be called from Python; it returns the status instead of exiting."""
    (cid,) = seed(server, 1)
    status = main(
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
        main(["rename", cid, "--user", USER, "--name", "x", "--timeout", "-1"])
    assert exited.value.code == 2


def test_names_the_terminal_cannot_show_are_escaped(server):
    """An output encoding that cannot show a name escapes it; no traceback."""
    (cid,) = seed(server, 1)
    env = cli_env(server, PYTHONIOENCODING="ascii")
    done = run("rename", cid, "--user", USER, "--name", "Größe 🚚", env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert r"Gr\xf6\xdfe" in done.stdout
    assert server.get_conversation(cid).name == "Größe 🚚"


def test_a_closed_standard_output_ends_quietly(server):
    """Output piped into a reader that went away ends without a traceback."""
    (cid,) = seed(server, 1)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    with start(
        "rename",
        cid,
        "--user",
        USER,
        "--name",
        "Piped",
        "--json",
        server=server,
        stdout=write_end,
    ) as process:
        os.close(write_end)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGPIPE
    assert "Traceback" not in stderr
    assert stderr == ""
    assert server.get_conversation(cid).name == "Piped"


def test_a_full_disk_for_standard_output_is_one_line(server):
    """Output that cannot be written (a full disk) is one line, no traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    (cid,) = seed(server, 1)
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(  # noqa: S603
            command("rename", cid, "--user", USER, "--name", "Full"),
            env=cli_env(server),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr == "python -m dify_async: error: No space left on device\n"
    assert server.get_conversation(cid).name == "Full"


def test_rename_interrupted_with_ctrl_c(server):
    """Ctrl-C during a rename exits 130 with a short message, no traceback."""
    (cid,) = seed(server, 1)
    server.inject_fault(Fault.delay(30.0), conversation_id=cid)
    with start(
        "rename", cid, "--user", USER, "--name", "Never", server=server
    ) as process:
        wait_for(lambda: server.requests_received == 1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


# -- demo --------------------------------------------------------------------------


def test_demo_renames_everything_and_checks_the_server():
    """The demo exits 0, shows the auto_generate, the 404 and a server check."""
    done = run("demo", "--count", "150", "--concurrency", "16", "-v", env=cli_env(None))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "auto_generate" in done.stdout
    assert "404 not_found: Conversation Not Exists." in done.stdout
    assert "Summary: 149 of 150 rows renamed" in done.stdout
    assert "Everything behaved as expected" in done.stdout
    assert "UNEXPECTED" not in done.stdout
    # Before the run it says which errors are planted and that they are
    # expected; each one that shows is marked so.
    intro = done.stdout.split("\n\n", 1)[0]
    assert "planted" in intro
    assert "expected 404 not_found" in intro
    assert re.search(r"404 not_found +1  \(expected\)", done.stdout)
    failures = [line for line in done.stderr.splitlines() if "404 not_found" in line]
    assert len(failures) == 1
    assert failures[0].endswith("(expected)")
    retries = [line for line in done.stderr.splitlines() if "Retrying" in line]
    assert retries
    assert all(line.endswith("(expected)") for line in retries)


def test_demo_interrupted_with_ctrl_c():
    """Ctrl-C stops the demo cleanly with its summary so far, every row counted."""
    with start(
        "demo", "--count", "2000", "--rate", "200", "--no-progress", server=None
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("Planted errors"):
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Interrupted: rows not reached were not attempted." in stdout
    assert "Traceback" not in stderr
    assert "Server check" not in stdout
    counts = summary_counts(stdout)
    reached = counts["succeeded"] + counts["failed"] + counts.get("in flight", 0)
    assert reached + counts["not reached"] == 2000
    assert "To resume" not in stdout
