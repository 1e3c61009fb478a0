"""The programs in examples/ run, against the fake server, and do what they say.

Every program runs as a subprocess from a temporary directory, outside the
repository, with the installed package: as a reader would run it.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from dify_async.testing import FakeDifyServer, Fault, instant_retries

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ("rename_one.py", "rename_from_csv.py", "aiohttp_service.py")
USER = "user-42"
SAMPLE_CONVERSATION = "45701982-8118-4bc5-8e9b-64562b4555f2"


def _environment(server: FakeDifyServer | None = None, **env: str) -> dict[str, str]:
    """This process's environment, with the key and URL of *server* or none."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DIFY_API_KEY", "DIFY_BASE_URL"}
    }
    if server is not None:
        environment["DIFY_API_KEY"] = server.api_key
        environment["DIFY_BASE_URL"] = server.base_url
    environment.update(env)
    return environment


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every program from a temporary directory."""
    monkeypatch.chdir(tmp_path)


def _run_with(
    environment: dict[str, str], script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, str(EXAMPLES / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _run(
    server: FakeDifyServer, script: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return _run_with(_environment(server, **env), script, *args)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested() -> None:
    """A new example needs a test here."""
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SCRIPTS)


# -- every example, bare -----------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_a_key_an_example_says_what_it_needs(script: str) -> None:
    """Run bare, with no key: one line on stderr, status 2, nothing started."""
    result = _run_with(_environment(), script)

    assert result.returncode == 2
    assert result.stderr == f"{script}: set DIFY_API_KEY or pass --fake (see --help)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_example_explains_its_options(script: str) -> None:
    """``--help`` works without a key, and mentions ``--fake``."""
    result = _run_with(_environment(), script, "--help")

    assert result.returncode == 0, result.stderr
    assert "--fake" in result.stdout


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("rename_one.py", "rename_one.py: give the CONVERSATION_ID to rename"),
        ("rename_from_csv.py", "rename_from_csv.py: give the CSV file to read"),
    ],
)
def test_with_a_key_but_no_argument_an_example_says_what_it_needs(
    script: str, message: str
) -> None:
    """A missing argument is one line on stderr and status 2, not a traceback."""
    result = _run_with(_environment(DIFY_API_KEY="app-example"), script)

    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_malformed_key_is_one_line(script: str) -> None:
    """A key that cannot be sent is reported before anything starts."""
    Path("renames.csv").write_text("conversation_id,user,name\n", encoding="utf-8")
    args = {
        "rename_one.py": (SAMPLE_CONVERSATION, "Trip plans", "--user", USER),
        "rename_from_csv.py": ("renames.csv",),
        "aiohttp_service.py": (),
    }[script]

    result = _run_with(_environment(DIFY_API_KEY="app-12 34"), script, *args)

    assert result.returncode == 2
    assert result.stderr.startswith("error: api_key contains characters not allowed")
    assert result.stderr.count("\n") == 1
    assert "app-12 34" not in result.stderr


# -- every example, with --fake ----------------------------------------------


def test_rename_one_with_fake_renames_on_its_own_server() -> None:
    """``--fake`` alone renames a sample conversation, with no key set."""
    result = _run_with(_environment(), "rename_one.py", "--fake")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SAMPLE_CONVERSATION} is now named 'Trip plans'\n"
    assert "Traceback" not in result.stderr


def test_rename_one_with_fake_takes_the_usual_arguments() -> None:
    """``--fake`` seeds the conversation and user given, and can auto-generate."""
    cid = "9d1c2f4e-5a8b-4e3d-8c7f-3b2a1d0e9f87"

    result = _run_with(
        _environment(), "rename_one.py", cid, "--auto", "--user", "u-7", "--fake"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{cid} is now named 'Can you plan")


def test_rename_from_csv_with_fake_renames_a_sample_batch(tmp_path: Path) -> None:
    """``--fake`` without a file renames a sample batch, some names generated."""
    report = tmp_path / "report.csv"

    result = _run_with(
        _environment(), "rename_from_csv.py", "--fake", "--report", str(report)
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "renamed 20, not renamed 0\n"
    with report.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["outcome"] for row in rows] == ["renamed"] * 20
    assert any(row["detail"].startswith("A question about") for row in rows)


def test_rename_from_csv_with_fake_renames_the_file(tmp_path: Path) -> None:
    """``--fake`` with a file seeds the file's conversations and renames them."""
    ids = [
        "0b5e2a4c-1c6e-4f0a-9a43-7d2f9c1e5b10",
        "6f1d3b8a-2b7a-4c55-9a43-0e6f1d3b8a21",
    ]
    source = tmp_path / "renames.csv"
    _write_csv(
        source,
        [(ids[0], USER, "Trip plans"), (ids[1], "u-7", ""), ("nope", USER, "x")],
    )

    result = _run_with(_environment(), "rename_from_csv.py", str(source), "--fake")

    assert result.returncode == 1  # the malformed row was not renamed
    assert result.stdout == "renamed 2, not renamed 1\n"
    assert f"{source}:4: skipped: conversation_id must be a UUID" in result.stderr
    assert "Traceback" not in result.stderr


# -- rename_one.py -----------------------------------------------------------


def test_rename_one_renames(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)

    result = _run(dify_server, "rename_one.py", cid, "Trip plans", "--user", USER)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{cid} is now named 'Trip plans'\n"
    assert dify_server.get_conversation(cid).name == "Trip plans"


def test_rename_one_auto_generates(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER, messages=["Lisbon in May?"])

    result = _run(dify_server, "rename_one.py", cid, "--auto", "--user", USER)

    assert result.returncode == 0, result.stderr
    assert dify_server.get_conversation(cid).name == "Lisbon in May?"
    assert dify_server.llm_calls == 1


def test_rename_one_reports_an_error_without_the_key(
    dify_server: FakeDifyServer,
) -> None:
    cid = dify_server.add_conversation(user=USER)

    result = _run(dify_server, "rename_one.py", cid, "Trip plans", "--user", "user-7")

    assert result.returncode == 1
    assert result.stderr.startswith("error: 404 not_found: Conversation Not Exists.")
    assert dify_server.api_key not in result.stderr
    assert "Traceback" not in result.stderr


def test_rename_one_without_a_key(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)
    environment = _environment(DIFY_BASE_URL=dify_server.base_url)

    result = _run_with(environment, "rename_one.py", cid, "x", "--user", USER)

    assert result.returncode == 2
    assert "set DIFY_API_KEY or pass --fake" in result.stderr
    assert dify_server.requests_received == 0


def test_rename_one_refuses_a_malformed_id(dify_server: FakeDifyServer) -> None:
    result = _run(dify_server, "rename_one.py", "45701982", "x", "--user", USER)

    assert result.returncode == 2
    assert result.stderr == "error: conversation_id must be a UUID, got '45701982'\n"
    assert dify_server.requests_received == 0


def test_rename_one_needs_a_name_or_auto(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)

    result = _run(dify_server, "rename_one.py", cid, "--user", USER)

    assert result.returncode == 2
    assert result.stderr == "rename_one.py: give either a NAME or --auto (see --help)\n"
    assert dify_server.requests_received == 0


# -- rename_from_csv.py ------------------------------------------------------


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(("conversation_id", "user", "name"))
        writer.writerows(rows)


def test_rename_from_csv_renames_every_row(
    dify_server: FakeDifyServer, tmp_path: Path
) -> None:
    dify_server.latency = 0.02  # long enough for the workers to overlap
    ids = [dify_server.add_conversation(user=USER) for _ in range(40)]
    source = tmp_path / "renames.csv"
    _write_csv(source, [(cid, USER, f"Ticket #{n}") for n, cid in enumerate(ids)])

    result = _run(dify_server, "rename_from_csv.py", str(source), "--concurrency", "4")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "renamed 40, not renamed 0\n"
    assert [dify_server.get_conversation(cid).name for cid in ids] == [
        f"Ticket #{n}" for n in range(40)
    ]
    assert 1 < dify_server.max_in_flight <= 4


def test_rename_from_csv_reports_what_failed(
    dify_server: FakeDifyServer, tmp_path: Path
) -> None:
    good = dify_server.add_conversation(user=USER)
    titled = dify_server.add_conversation(user=USER, messages=["Lisbon in May?"])
    someone_elses = dify_server.add_conversation(user="user-7")
    dify_server.inject_fault(Fault.gateway(502), conversation_id=good)
    source = tmp_path / "renames.csv"
    report = tmp_path / "report.csv"
    _write_csv(
        source,
        [
            (good, USER, "Trip plans"),
            ("not-a-uuid", USER, "Broken"),
            (titled, USER, ""),
            (someone_elses, USER, "Not mine"),
        ],
    )

    result = _run(
        dify_server, "rename_from_csv.py", str(source), "--report", str(report)
    )

    assert result.returncode == 1
    assert result.stdout == "renamed 2, not renamed 2\n"
    assert f"{source}:3: skipped: conversation_id must be a UUID" in result.stderr
    assert f"{someone_elses}: 404 not_found" in result.stderr
    assert "Retrying POST" in result.stderr  # the 502 was retried, and logged
    assert dify_server.get_conversation(good).name == "Trip plans"
    assert dify_server.get_conversation(titled).name == "Lisbon in May?"
    assert dify_server.get_conversation(someone_elses).name == "New conversation"
    with report.open(newline="", encoding="utf-8") as file:
        rows = {row["conversation_id"]: row for row in csv.DictReader(file)}
    assert {cid: row["outcome"] for cid, row in rows.items()} == {
        good: "renamed",
        "not-a-uuid": "skipped",
        titled: "renamed",
        someone_elses: "NotFoundError",
    }
    assert rows[titled]["detail"] == "Lisbon in May?"


def test_rename_from_csv_refuses_a_file_without_the_columns(
    dify_server: FakeDifyServer, tmp_path: Path
) -> None:
    source = tmp_path / "renames.csv"
    source.write_text("id,title\n1,x\n", encoding="utf-8")

    result = _run(dify_server, "rename_from_csv.py", str(source))

    assert result.returncode == 1
    assert "missing column(s): conversation_id, name, user" in result.stderr
    assert dify_server.requests_received == 0


def test_rename_from_csv_without_a_key(
    dify_server: FakeDifyServer, tmp_path: Path
) -> None:
    source = tmp_path / "renames.csv"
    _write_csv(source, [])

    result = _run(dify_server, "rename_from_csv.py", str(source), DIFY_API_KEY="")

    assert result.returncode == 2
    assert "set DIFY_API_KEY or pass --fake" in result.stderr
    assert dify_server.requests_received == 0


def test_rename_from_csv_without_the_file(dify_server: FakeDifyServer) -> None:
    result = _run(dify_server, "rename_from_csv.py", "missing.csv")

    assert result.returncode == 2
    assert result.stderr.startswith("rename_from_csv.py: no such file: missing.csv")
    assert "Traceback" not in result.stderr


# -- aiohttp_service.py ------------------------------------------------------


@pytest.fixture
def service_module() -> ModuleType:
    return _load("aiohttp_service")


@pytest.fixture
async def service(
    service_module: ModuleType, dify_server: FakeDifyServer
) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    app = service_module.create_app(
        api_key=dify_server.api_key, base_url=dify_server.base_url, timeout=0.5
    )
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        yield server, session


@pytest.fixture
def no_waits() -> Iterator[None]:
    with instant_retries():
        yield


async def _post(
    service: tuple[TestServer, aiohttp.ClientSession], cid: str, body: object
) -> tuple[int, dict[str, object], str | None]:
    server, session = service
    url = server.make_url(f"/conversations/{cid}/name")
    # A bounded wait: a retry policy gone wrong fails here, it does not hang.
    async with session.post(
        url, json=body, timeout=aiohttp.ClientTimeout(20)
    ) as response:
        return (
            response.status,
            await response.json(),
            response.headers.get("Retry-After"),
        )


async def test_service_renames(
    service: tuple[TestServer, aiohttp.ClientSession], dify_server: FakeDifyServer
) -> None:
    cid = dify_server.add_conversation(user=USER)

    status, body, _ = await _post(service, cid, {"user": USER, "name": "Trip plans"})

    assert status == 200
    assert body["id"] == cid
    assert body["name"] == "Trip plans"
    assert isinstance(body["updated_at"], str)
    assert dify_server.get_conversation(cid).name == "Trip plans"


async def test_service_auto_generates(
    service: tuple[TestServer, aiohttp.ClientSession], dify_server: FakeDifyServer
) -> None:
    cid = dify_server.add_conversation(user=USER, messages=["Lisbon in May?"])

    status, body, _ = await _post(service, cid, {"user": USER, "auto_generate": True})

    assert (status, body["name"]) == (200, "Lisbon in May?")


async def test_service_shares_one_client(
    service_module: ModuleType,
    service: tuple[TestServer, aiohttp.ClientSession],
    dify_server: FakeDifyServer,
) -> None:
    server, _ = service
    client = server.app[service_module.DIFY]
    ids = [dify_server.add_conversation(user=USER) for _ in range(20)]

    results = await asyncio.gather(
        *(
            _post(service, cid, {"user": USER, "name": f"#{n}"})
            for n, cid in enumerate(ids)
        )
    )

    assert [status for status, _, _ in results] == [200] * 20
    assert server.app[service_module.DIFY] is client
    assert not client.closed
    await server.close()
    assert client.closed  # closed with the application


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": USER}, "name is required unless auto_generate=True"),
        ({"name": "Trip plans"}, "user must not be empty"),
        ({"user": USER, "name": "   "}, "name must not be empty"),
        ({"user": USER, "name": "x", "auto_generate": "yes"}, "must be a bool"),
    ],
)
async def test_service_refuses_bad_input(
    service: tuple[TestServer, aiohttp.ClientSession],
    dify_server: FakeDifyServer,
    body: dict[str, object],
    message: str,
) -> None:
    cid = dify_server.add_conversation(user=USER)

    status, answer, _ = await _post(service, cid, body)

    assert status == 422
    assert message in str(answer["error"])
    assert dify_server.requests_received == 0


async def test_service_refuses_a_body_that_is_not_an_object(
    service: tuple[TestServer, aiohttp.ClientSession], dify_server: FakeDifyServer
) -> None:
    cid = dify_server.add_conversation(user=USER)
    server, session = service
    url = server.make_url(f"/conversations/{cid}/name")

    async with session.post(url, data=b"not json") as response:
        assert response.status == 400
    status, _, _ = await _post(service, cid, ["a", "list"])
    assert status == 400


async def test_service_maps_dify_errors(
    service: tuple[TestServer, aiohttp.ClientSession],
    dify_server: FakeDifyServer,
    no_waits: None,
) -> None:
    cid = dify_server.add_conversation(user=USER)

    assert (await _post(service, cid, {"user": "user-7", "name": "x"}))[0] == 404

    dify_server.inject_fault(Fault.gateway(502), times=3)
    status, body, _ = await _post(service, cid, {"user": USER, "name": "x"})
    assert (status, body) == (502, {"error": "Dify could not rename the conversation"})

    dify_server.inject_fault(Fault.rate_limit(retry_after="120"))
    status, _, retry_after = await _post(service, cid, {"user": USER, "name": "x"})
    assert (status, retry_after) == (503, "120")

    dify_server.inject_fault(Fault.delay(5), times=3)
    status, _, _ = await _post(service, cid, {"user": USER, "name": "x"})
    assert status == 504


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_and_rename(
    environment: dict[str, str], cid: str, *args: str
) -> tuple[int, dict[str, object], subprocess.CompletedProcess[str]]:
    """Start the service as a program, rename *cid* through it, stop it."""
    port = _free_port()
    command = [sys.executable, str(EXAMPLES / "aiohttp_service.py")]
    process = subprocess.Popen(  # noqa: S603
        [*command, "--port", str(port), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.05)

        async def call() -> tuple[int, dict[str, object]]:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{port}/conversations/{cid}/name",
                    json={"user": USER, "name": "Trip plans"},
                ) as response,
            ):
                return response.status, await response.json()

        status, body = asyncio.run(call())
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finished = subprocess.CompletedProcess(
        process.args, process.returncode, stdout, stderr
    )
    return status, body, finished


def test_service_runs_as_a_program(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)

    status, body, finished = _serve_and_rename(_environment(dify_server), cid)

    assert status == 200
    assert (body["id"], body["name"]) == (cid, "Trip plans")
    assert finished.returncode == 0, finished.stderr
    assert "Unclosed" not in finished.stderr
    assert dify_server.get_conversation(cid).name == "Trip plans"


def test_service_with_fake_serves_its_own_conversation() -> None:
    """``--fake`` with no key: the service renames on a fake server it starts."""
    status, body, finished = _serve_and_rename(
        _environment(), SAMPLE_CONVERSATION, "--fake"
    )

    assert status == 200
    assert (body["id"], body["name"]) == (SAMPLE_CONVERSATION, "Trip plans")
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr
    assert "Unclosed" not in finished.stderr
    assert "curl -X POST localhost:" in finished.stdout
