"""An aiohttp.web service that renames Dify conversations on request.

One :class:`~dify_async.AsyncDifyClient` is made when the application starts
and shared by every request: it is safe to use from many requests at once, and
sharing it keeps connections to Dify open between requests. It is closed when
the application shuts down. Run it with the key in the environment::

    export DIFY_API_KEY=app-...
    python examples/aiohttp_service.py --port 8080

and rename a conversation through it::

    curl -X POST localhost:8080/conversations/$CONVERSATION_ID/name \
        -H 'Content-Type: application/json' \
        -d '{"user": "user-42", "name": "Trip plans"}'

Send ``{"user": ..., "auto_generate": true}`` to let Dify choose the name.

No Dify at hand? ``--fake`` starts a fake Dify server inside the service,
holding one conversation, and prints a ``curl`` command that renames it::

    python examples/aiohttp_service.py --fake

Without a key or ``--fake``, the service says so in one line and exits with
status 2, before it starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from aiohttp import web

from dify_async import (
    APITimeoutError,
    AsyncDifyClient,
    Conversation,
    DifyError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
)
from dify_async.testing import FakeDifyServer

logger = logging.getLogger(__name__)

DIFY = web.AppKey("dify", AsyncDifyClient)
"""Where the application keeps its shared client."""

SAMPLE_CONVERSATION = "45701982-8118-4bc5-8e9b-64562b4555f2"
SAMPLE_USER = "user-42"


def create_app(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 10.0,
    fake: bool = False,
    port: int = 8080,
) -> web.Application:
    """Build the application.

    Args:
        api_key: The Dify app's key; ``DIFY_API_KEY`` when ``None``.
        base_url: Dify's base URL; ``DIFY_BASE_URL`` (or Dify Cloud) when
            ``None``.
        timeout: Seconds per attempt to reach Dify. Our own callers should
            not wait minutes for an answer.
        fake: Talk to a fake Dify server started with the application,
            holding one conversation, instead of the Dify above.
        port: The port the service listens on (for the hint printed with
            ``fake``).
    """

    async def dify_client(app: web.Application) -> AsyncIterator[None]:
        # Runs inside the server's event loop: the client's connection pool
        # belongs to that loop, is made once, and is closed on shutdown.
        async with AsyncDifyClient(
            api_key, base_url=base_url, timeout=timeout
        ) as client:
            app[DIFY] = client
            yield

    async def fake_dify_client(app: web.Application) -> AsyncIterator[None]:
        async with FakeDifyServer() as server:
            server.add_conversation(
                user=SAMPLE_USER,
                conversation_id=SAMPLE_CONVERSATION,
                messages=["Can you plan three days in Lisbon for me?"],
            )
            body = json.dumps({"user": SAMPLE_USER, "name": "Trip plans"})
            url = f"localhost:{port}/conversations/{SAMPLE_CONVERSATION}/name"
            print(
                f"A fake Dify server at {server.base_url} holds one conversation."
                f" Rename it with:\n  curl -X POST {url}"
                f" -H 'Content-Type: application/json' -d '{body}'",
                flush=True,
            )
            async with AsyncDifyClient(
                server.api_key, base_url=server.base_url, timeout=timeout
            ) as client:
                app[DIFY] = client
                yield

    app = web.Application()
    app.cleanup_ctx.append(fake_dify_client if fake else dify_client)
    app.router.add_post("/conversations/{conversation_id}/name", rename)
    return app


async def rename(request: web.Request) -> web.Response:
    """``POST /conversations/{id}/name`` with ``{"user", "name"|"auto_generate"}``."""
    try:
        body: Any = await request.json()
    except ValueError:
        return problem(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return problem(400, "the body must be a JSON object")

    client = request.app[DIFY]
    try:
        conversation = await client.rename_conversation(
            request.match_info["conversation_id"],
            user=body.get("user", ""),
            name=body.get("name"),
            auto_generate=body.get("auto_generate", False),
        )
    except DifyError as error:
        return error_response(error)
    return web.json_response(as_json(conversation))


def error_response(error: DifyError) -> web.Response:
    """Turn what went wrong with Dify into an answer for our own caller."""
    match error:
        case InvalidRequestError():
            # The caller's input: the message names the bad field.
            return problem(422, error.message)
        case NotFoundError(code="not_found"):
            return problem(404, "no such conversation for this user")
        case RateLimitError(retry_after=wait):
            # The client already waited and retried; pass the wait along.
            headers = {} if wait is None else {"Retry-After": str(math.ceil(wait))}
            return problem(503, "Dify is busy, try again later", headers)
        case APITimeoutError():
            logger.warning("Dify did not answer in time: %s", error)
            return problem(504, "Dify did not answer in time")
        case _:
            # A wrong key, Dify down, a gateway error: our problem, not the
            # caller's. The message is safe to log: it never holds the key.
            logger.error("renaming failed: %s", error)
            return problem(502, "Dify could not rename the conversation")


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error answer."""
    return web.json_response({"error": detail}, status=status, headers=headers)


def as_json(conversation: Conversation) -> dict[str, Any]:
    """The parts of a conversation our callers care about."""
    updated = conversation.updated_at
    return {
        "id": conversation.id,
        "name": conversation.name,
        "updated_at": None if updated is None else updated.isoformat(),
    }


class Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: message`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; return the exit status."""
    parser = Parser(description="Rename Dify conversations over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--fake",
        action="store_true",
        help="talk to a fake Dify server started with the service",
    )
    args = parser.parse_args(argv)
    if not args.fake:
        # Check the settings before the service starts: a missing or
        # malformed key is one line here, not a traceback from the startup.
        if not os.environ.get("DIFY_API_KEY"):
            parser.error("set DIFY_API_KEY or pass --fake")
        try:
            AsyncDifyClient()  # makes no connection: it only checks
        except InvalidRequestError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO)
    web.run_app(
        create_app(fake=args.fake, port=args.port), host=args.host, port=args.port
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
