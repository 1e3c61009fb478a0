"""The programs in examples/ run, against the fake server, and do what they say."""

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
USER = "user-42"


def _run(
    server: FakeDifyServer, script: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DIFY_API_KEY": server.api_key,
        "DIFY_BASE_URL": server.base_url,
        **env,
    }
    return subprocess.run(  # noqa: S603
        [sys.executable, str(EXAMPLES / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested() -> None:
    """A new example needs a test here."""
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "rename_one.py",
        "rename_from_csv.py",
        "aiohttp_service.py",
    }


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
    env = {k: v for k, v in os.environ.items() if k != "DIFY_API_KEY"}

    result = subprocess.run(  # noqa: S603
        [sys.executable, str(EXAMPLES / "rename_one.py"), cid, "x", "--user", USER],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 1
    assert "no API key" in result.stderr
    assert dify_server.requests_received == 0


def test_rename_one_needs_a_name_or_auto(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)

    result = _run(dify_server, "rename_one.py", cid, "--user", USER)

    assert result.returncode == 2
    assert "give either a NAME or --auto" in result.stderr
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
    assert result.stderr.startswith("error: api_key is empty")


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


def test_service_runs_as_a_program(dify_server: FakeDifyServer) -> None:
    cid = dify_server.add_conversation(user=USER)
    port = _free_port()
    env = {
        **os.environ,
        "DIFY_API_KEY": dify_server.api_key,
        "DIFY_BASE_URL": dify_server.base_url,
    }
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(EXAMPLES / "aiohttp_service.py"), "--port", str(port)],
        env=env,
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
        assert status == 200
        assert (body["id"], body["name"]) == (cid, "Trip plans")
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Unclosed" not in stderr
    assert dify_server.get_conversation(cid).name == "Trip plans"
