"""The files here are checked by mypy (``nox -s typing``), never run by pytest."""

collect_ignore_glob: list[str] = ["*.py"]
