"""The wheel carries what users need: metadata, py.typed, and no tests.

When the package was installed from a wheel (as in the nox ``tests``
session), that installed wheel is inspected: its RECORD and its metadata.
From an editable install, whose metadata is frozen at install time, a wheel
is built from the checkout into a temporary directory instead (this needs
hatchling, the build backend).
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "dify-async"


@attrs.frozen
class Wheel:
    files: list[str]
    metadata: Message
    entry_points: dict[tuple[str, str], str]


def _editable() -> bool:
    direct_url = importlib.metadata.distribution(DIST).read_text("direct_url.json")
    if direct_url is None:
        return False
    return bool(json.loads(direct_url).get("dir_info", {}).get("editable", False))


def _installed() -> Wheel:
    distribution = importlib.metadata.distribution(DIST)
    files = distribution.files
    assert files is not None
    return Wheel(
        files=[path.as_posix() for path in files],
        metadata=email.parser.Parser().parsestr(
            distribution.read_text("METADATA") or ""
        ),
        entry_points={
            (ep.group, ep.name): ep.value for ep in distribution.entry_points
        },
    )


def _built(out: Path) -> Wheel:
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (info,) = {name.split("/", 1)[0] for name in names if ".dist-info/" in name}
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    return Wheel(
        files=names,
        metadata=email.parser.Parser().parsestr(metadata),
        entry_points={
            (group, name): value
            for group in entry_points.sections()
            for name, value in entry_points[group].items()
        },
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    if not _editable():
        return _installed()
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("an editable install without hatchling cannot build a wheel")
    return _built(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_is_typed(wheel: Wheel) -> None:
    assert "dify_async/py.typed" in wheel.files


def test_the_wheel_holds_the_package_and_nothing_else(wheel: Wheel) -> None:
    tops = {path.split("/", 1)[0] for path in wheel.files}
    # An installed RECORD also lists the console script, outside site-packages.
    tops = {t for t in tops if not t.endswith(".dist-info") and t not in {"..", "bin"}}
    assert tops == {"dify_async"}
    assert "dify_async/testing/_server.py" in wheel.files
    assert "dify_async/testing/pytest_plugin.py" in wheel.files
    assert not [p for p in wheel.files if re.search(r"(^|/)(tests|conftest)", p)]


def test_the_description_is_the_readme(wheel: Wheel) -> None:
    assert wheel.metadata["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    description = wheel.metadata.get_payload()
    assert isinstance(description, str)
    assert description.strip() == readme.strip()


def test_the_summary_and_python_versions(wheel: Wheel) -> None:
    metadata = wheel.metadata
    assert metadata["Name"] == DIST
    assert "Dify" in metadata["Summary"]
    assert metadata["Requires-Python"] == ">=3.10"
    assert "MIT" in (metadata["License-Expression"], metadata["License"])
    classifiers = metadata.get_all("Classifier") or []
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert "Framework :: AsyncIO" in classifiers
    assert "Framework :: Pytest" in classifiers


def test_the_project_urls(wheel: Wheel) -> None:
    entries = wheel.metadata.get_all("Project-URL") or []
    urls = dict(entry.split(", ", 1) for entry in entries)
    assert set(urls) >= {"Documentation", "Changelog", "Source", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())


def test_the_dependencies_and_the_cli_extra(wheel: Wheel) -> None:
    requires = wheel.metadata.get_all("Requires-Dist") or []
    runtime = sorted(
        re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in requires if "extra" not in r
    )
    assert runtime == ["aiohttp", "attrs", "cattrs", "tenacity"]
    assert wheel.metadata.get_all("Provides-Extra") == ["cli"]
    assert any(
        r.startswith("tqdm") and re.search(r"extra == ['\"]cli['\"]", r)
        for r in requires
    )


def test_the_entry_points(wheel: Wheel) -> None:
    assert wheel.entry_points[("pytest11", "dify_async")] == (
        "dify_async.testing.pytest_plugin"
    )
    assert wheel.entry_points[("console_scripts", "dify-async")] == (
        "dify_async.cli:main"
    )
