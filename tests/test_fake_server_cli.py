"""``python -m dify_async.testing`` serves a fake Dify that other programs can use.

Each test starts it as a real subprocess, waits for its state file, and drives
it from outside: raw HTTP, the library's own command line, signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from dify_async.testing.__main__ import _published, main

STARTUP_LIMIT = 20.0  # seconds; only a bound so that a broken start cannot hang
FIRST_MESSAGE = "Plan three days in Lisbon, with a day trip to Sintra"
posix_only = pytest.mark.skipif(
    sys.platform == "win32", reason="signals are POSIX-only"
)


@attrs.define
class Standalone:
    """A running ``python -m dify_async.testing`` and what it announced."""

    process: subprocess.Popen[str]
    state_file: Path
    state: dict[str, Any]
    out: str = ""
    err: str = ""

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Send *signum*, wait for the exit, and keep what it printed."""
        self.process.send_signal(signum)
        self.out, self.err = self.process.communicate(timeout=STARTUP_LIMIT)
        return self.process.returncode


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dify_async.testing", *args]


def _wait_for(path: Path, process: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait (bounded) for the state file, failing early if the process died."""
    give_up = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < give_up:
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"exited with {process.returncode}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"no state file after {STARTUP_LIMIT} s")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    """The fake server in a subprocess, with two seeded conversations."""
    state_file = tmp_path / "fake-dify.json"
    process = subprocess.Popen(  # noqa: S603  (our own module)
        _command(
            "--port",
            "0",
            "--conversations",
            "2",
            "--message",
            FIRST_MESSAGE,
            "--state-file",
            str(state_file),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Standalone(process, state_file, _wait_for(state_file, process))
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def post_rename(
    state: dict[str, Any], conversation_id: str, body: dict[str, Any]
) -> tuple[int, Any]:
    """POST a rename with urllib; return the status and the decoded JSON."""
    request = urllib.request.Request(  # noqa: S310  (a local http URL)
        f"{state['base_url']}/conversations/{conversation_id}/name",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {state['api_key']}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=STARTUP_LIMIT) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_the_state_file_says_how_to_reach_it(standalone):
    """The JSON state file holds the base URL, the key, the user and the ids."""
    state = standalone.state

    assert set(state) == {"base_url", "api_key", "user", "conversation_ids"}
    assert state["base_url"].startswith("http://127.0.0.1:")
    assert state["base_url"].endswith("/v1")
    assert not state["base_url"].startswith("http://127.0.0.1:0/")
    assert state["api_key"].startswith("app-")
    assert state["user"] == "user-42"
    assert len(set(state["conversation_ids"])) == 2


def test_raw_http_renames_a_seeded_conversation(standalone):
    """A plain HTTP client renames, titles, and is refused like by Dify."""
    state = standalone.state
    first, second = state["conversation_ids"]

    renamed = post_rename(state, first, {"name": "Trip plans", "user": state["user"]})
    titled = post_rename(state, second, {"auto_generate": True, "user": state["user"]})
    stranger = post_rename(state, first, {"name": "Mine", "user": "someone-else"})

    assert renamed[0] == 200
    assert renamed[1]["id"] == first
    assert renamed[1]["name"] == "Trip plans"
    assert titled == (200, {**titled[1], "name": FIRST_MESSAGE})
    assert stranger[0] == 404
    assert stranger[1]["code"] == "not_found"


def test_the_command_line_renames_against_it(standalone):
    """python -m dify_async rename works with the exported settings."""
    state = standalone.state
    cid = state["conversation_ids"][0]
    env = {
        **os.environ,
        "DIFY_BASE_URL": state["base_url"],
        "DIFY_API_KEY": state["api_key"],
    }

    done = subprocess.run(  # noqa: S603  (our own module)
        [
            sys.executable,
            "-m",
            "dify_async",
            "rename",
            cid,
            "--user",
            state["user"],
            "--name",
            "Trip plans",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["id"] == cid
    assert answer["name"] == "Trip plans"


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_it_cleanly(standalone, signum):
    """SIGINT or SIGTERM: exit status 0, no traceback, the state file removed."""
    assert standalone.stop(signum) == 0

    assert "Traceback" not in standalone.err
    assert not standalone.state_file.exists()
    assert "Stopped." in standalone.out.splitlines()


@posix_only
def test_it_prints_what_the_state_file_holds(standalone):
    """The printed lines name the URL, the key and the ids, with export lines."""
    state = standalone.state
    standalone.stop()
    lines = standalone.out.splitlines()

    assert lines[0] == f"Fake Dify 1.9.2 listening on {state['base_url']}"
    assert f"export DIFY_BASE_URL={state['base_url']}" in lines
    assert f"export DIFY_API_KEY={state['api_key']}" in lines
    assert any(state["api_key"] in line for line in lines[1:4])
    for cid in state["conversation_ids"]:
        assert f"    {cid}" in lines


def test_a_port_in_use_is_a_one_line_error(standalone, tmp_path):
    """A second server on a busy port exits 1 with a message, not a traceback."""
    port = standalone.state["base_url"].rsplit(":", 1)[1].split("/")[0]
    state_file = tmp_path / "second.json"

    done = subprocess.run(  # noqa: S603  (our own module)
        _command("--port", port, "--state-file", str(state_file)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert done.stderr.startswith("python -m dify_async.testing: error: ")
    assert "Traceback" not in done.stderr
    assert not state_file.exists()


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--conversations", "--user", "--message"):
        assert option in out
    assert "--state-file" in out
    assert "SIGTERM" in out


@pytest.mark.parametrize(
    "args", [["--conversations", "-1"], ["--port", "70000"], ["--port", "x"]]
)
def test_bad_arguments_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as caught:
        main(args)

    assert caught.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_an_unwritable_state_file_is_an_error(tmp_path, capsys):
    """A state file that cannot be written stops the server: exit 1, no debris."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep").touch()

    assert main(["--state-file", str(taken), "--conversations", "0"]) == 1

    err = capsys.readouterr().err
    assert err.startswith("python -m dify_async.testing: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_without_a_state_file_nothing_is_written(tmp_path):
    with _published(None, {"base_url": "x"}):
        pass

    assert list(tmp_path.iterdir()) == []
