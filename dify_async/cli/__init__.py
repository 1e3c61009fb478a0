"""The ``dify-async`` command line.

Three commands:

- ``rename``: rename one conversation and print it;
- ``batch``: rename every row of a CSV or JSON Lines file, with bounded
  concurrency, optional pacing, a results file written as renames finish (so
  a killed run can be resumed), progress, and a summary;
- ``demo``: the same batch machinery against an embedded fake Dify server,
  with faults planted, checked against the server's own records at the end.

The API key and base URL come from ``--api-key``/``--base-url`` or from
``DIFY_API_KEY``/``DIFY_BASE_URL``; the key is never printed.

Exit status: 0 when every rename succeeded, 1 when any failed (or a row was
refused, or the input broke off), 2 for a usage, input or environment problem
found before anything was sent, and 128 + the signal number when interrupted.

The package uses only the public API of :mod:`dify_async` (and, for the demo,
of :mod:`dify_async.testing`).
"""

from ._main import main

__all__ = ["main"]
