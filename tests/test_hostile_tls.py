"""TLS: refused certificates are named and never retried; trusted ones work.

The servers are :class:`hostile_servers.HostileServer` with a certificate from
a throwaway ``trustme`` authority. The server counts TCP connections before
any handshake, so a client that retries a refused certificate is caught.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from faulty_servers import CID
from hostile_servers import HostileServer, close_on_first_bytes

from dify_async import (
    APIConnectionError,
    AsyncDifyClient,
    CertificateVerificationError,
    Conversation,
)
from dify_async.testing import FakeDifyServer

KEY = "app-hostile-tls-key"
USER = "user-42"
CALL_LIMIT = 20.0


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    """A certificate authority nobody trusts but the tests that say so."""
    return trustme.CA()


def server_context(authority: trustme.CA, *hosts: str, **kwargs: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*hosts, **kwargs).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def good_cert(authority: trustme.CA) -> ssl.SSLContext:
    """A server context with a valid certificate for 127.0.0.1."""
    return server_context(authority, "127.0.0.1")


@pytest.fixture(scope="module")
def trusting(authority: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the authority (and nothing else)."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.fixture
async def trusting_session(
    trusting: ssl.SSLContext,
) -> AsyncIterator[aiohttp.ClientSession]:
    """A borrowed session whose connector trusts the test authority."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=trusting)
    ) as session:
        yield session


async def rename(client: AsyncDifyClient, **kwargs: Any) -> Conversation:
    if not kwargs.get("auto_generate"):
        kwargs.setdefault("name", "Trip plans")
    call = client.rename_conversation(CID, user=USER, **kwargs)
    return await asyncio.wait_for(call, CALL_LIMIT)


def assert_refused_once(error: APIConnectionError, server: HostileServer) -> None:
    """A certificate error: named, not sent, one TCP connection, no retry."""
    assert isinstance(error, CertificateVerificationError)
    assert isinstance(error, APIConnectionError)
    assert "certificate" in error.message.lower(), error.message
    assert error.request_sent is False
    assert error.attempts == 1
    assert server.connections_opened == 1
    assert server.handshakes == 0
    assert server.attempts == 0


async def test_an_untrusted_authority_is_refused_once(
    new_client, good_cert, no_retry_wait
):
    """A certificate from an unknown CA: CertificateVerificationError, one try."""
    async with HostileServer(ssl=good_cert) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(CertificateVerificationError) as err:
            await rename(client)
    assert_refused_once(err.value, server)


async def test_a_certificate_for_another_host_is_refused_once(
    new_client, authority, trusting_session, no_retry_wait
):
    """A trusted certificate for another name: refused, named, not retried."""
    context = server_context(authority, "elsewhere.example")
    async with HostileServer(ssl=context) as server:
        client = new_client(server.base_url, session=trusting_session, max_retries=2)
        with pytest.raises(CertificateVerificationError) as err:
            await rename(client)
    assert_refused_once(err.value, server)


async def test_an_expired_certificate_is_refused_once(
    new_client, authority, trusting_session, no_retry_wait
):
    """A trusted but expired certificate: refused, named, not retried."""
    now = dt.datetime.now(dt.timezone.utc)
    context = server_context(
        authority,
        "127.0.0.1",
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    async with HostileServer(ssl=context) as server:
        client = new_client(server.base_url, session=trusting_session, max_retries=2)
        with pytest.raises(CertificateVerificationError) as err:
            await rename(client)
    assert_refused_once(err.value, server)


async def test_a_certificate_error_is_not_retried_for_auto_generate_either(
    new_client, good_cert, no_retry_wait
):
    """Refusing a certificate is final for every kind of rename."""
    async with HostileServer(ssl=good_cert) as server:
        client = new_client(server.base_url, max_retries=5)
        with pytest.raises(CertificateVerificationError) as err:
            await rename(client, auto_generate=True)
    assert_refused_once(err.value, server)


async def test_a_handshake_cut_short_gives_a_reason(new_client, no_retry_wait):
    """TCP accepted, then closed mid-handshake: APIConnectionError with a reason."""
    async with HostileServer(on_connect=close_on_first_bytes) as server:
        base_url = server.base_url.replace("http://", "https://")
        client = new_client(base_url, max_retries=0)
        with pytest.raises(APIConnectionError) as err:
            await rename(client)
    error = err.value
    assert not isinstance(error, CertificateVerificationError)
    assert error.request_sent is False
    message = error.message.rstrip()
    assert not message.endswith(":"), message
    assert message.rpartition(": ")[2].strip(), message
    assert server.connections_opened == 1


async def test_https_to_a_plain_http_server_suggests_http(new_client, no_retry_wait):
    """https:// pointed at a plain HTTP server: the message suggests http://."""
    async with FakeDifyServer() as fake:
        base_url = fake.base_url.replace("http://", "https://")
        client = new_client(base_url, max_retries=0)
        with pytest.raises(APIConnectionError) as err:
            await rename(client)
    assert not isinstance(err.value, CertificateVerificationError)
    assert "http://" in err.value.message, err.value.message
    assert err.value.request_sent is False


async def test_a_session_that_trusts_the_authority_renames_over_tls(
    new_client, good_cert, trusting_session
):
    """With a borrowed session trusting the CA, renames work and reuse TLS."""
    async with HostileServer(ssl=good_cert) as server:
        client = new_client(server.base_url, session=trusting_session)
        first = await rename(client)
        second = await rename(client)
        # Closed while the server is up, so that the TLS connection ends
        # cleanly (Python 3.10 warns about one the peer tore down).
        await trusting_session.close()
    assert first.id == second.id == CID
    assert first.name == "Trip plans"
    assert server.attempts == 2
    assert server.handshakes == server.connections_opened == 1
