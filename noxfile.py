"""Development sessions: ``nox`` runs tests, lint, typing, docs and build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs", "build"]
nox.options.error_on_missing_interpreters = False  # skip Pythons not installed
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
TEST_DEPS = nox.project.dependency_groups(PYPROJECT, "tests")


def _expose_pyenv_pythons() -> None:
    """Make every pyenv-installed 3.10+ interpreter visible to nox.

    pyenv's shims only run the versions named in ``PYENV_VERSION`` (which
    ``pyenv exec`` sets to the one version in use), so add the others to it.
    """
    if shutil.which("pyenv") is None:
        return
    listed = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    wanted = [v for v in listed if re.fullmatch(r"3\.1[0-9]\.\d+", v)]
    current = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    if wanted:
        os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys(current + wanted))


_expose_pyenv_pythons()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite against the built wheel, with branch coverage."""
    session.install(*TEST_DEPS)
    # A regular (non-editable) install builds and installs the wheel, so a
    # file missing from the package fails here rather than for users.
    session.install("--force-reinstall", "--no-deps", ".")
    session.install(".[cli]")
    session.env["DIFY_ASYNC_TEST_INSTALLED"] = "1"
    session.run("coverage", "erase")
    # Run pytest as a script (not ``-m``) so the checkout is not on sys.path
    # and the installed wheel is what gets imported.
    pytest = str(Path(session.bin) / "pytest")
    # One worker per core (pytest-xdist); coverage follows the workers through
    # its subprocess patch. ``nox -s tests -- -n 0`` runs them in one process.
    session.run("coverage", "run", pytest, "-n", "auto", *session.posargs)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check the package and the typing examples with mypy --strict."""
    session.install("mypy", "pytest", ".")
    session.run("mypy", "--strict", "dify_async")
    if (ROOT / "tests" / "typing").is_dir():
        session.run("mypy", "--strict", "tests/typing")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation, warnings as errors."""
    session.install("-r", "docs/requirements.txt", ".")
    session.run(
        "sphinx-build", "-W", "-n", "--keep-going", "-b", "html",
        "docs", "docs/_build/html",
    )  # fmt: skip


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and wheel, and check them."""
    session.install("build", "twine", "check-wheel-contents")
    shutil.rmtree(ROOT / "dist", ignore_errors=True)
    session.run("python", "-m", "build")
    session.run("twine", "check", "--strict", *map(str, (ROOT / "dist").glob("*")))
    session.run("check-wheel-contents", *map(str, (ROOT / "dist").glob("*.whl")))


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo against the embedded fake Dify server."""
    session.install(".[cli]")
    session.run("python", "-m", "dify_async", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (see benchmarks/README.md)."""
    session.install(".", "-r", "benchmarks/requirements.txt")
    session.run("python", "benchmarks/run.py", *session.posargs)
