"""Run the command line as ``python -m dify_async``."""

from dify_async.cli import main

if __name__ == "__main__":  # pragma: no branch
    raise SystemExit(main(prog="python -m dify_async"))
