"""Connecting: TLS modes against the test server, and what a failed connection says.

The failures are made on this machine only: a loopback port nobody listens on,
a host name under ``.invalid`` (reserved: resolution fails without asking any
server), a role the test server does not have.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from chat_storage import (
    ChatStore,
    ChatStoreError,
    DatabaseError,
    DatabaseUnavailable,
    create_engine,
    create_unpooled_engine,
)
from tests.conftest import MakeUser

PASSWORD = "pw-" + uuid.uuid4().hex
MISSING_CONVERSATION = "00000000-0000-0000-0000-000000000000"


def with_tls(database_url: str, **query: str) -> URL:
    """The test database's URL with its TLS options replaced by ``query``."""
    url = make_url(database_url).difference_update_query(["ssl", "sslmode"])
    return url.update_query_dict(query)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def failure_of(url: str | URL) -> ChatStoreError:
    """What a ChatStore on ``url`` raises for its first operation."""
    engine = create_engine(url, connect_timeout=10)
    try:
        with pytest.raises(ChatStoreError) as failure:
            await ChatStore(engine).get_conversation("user-1", MISSING_CONVERSATION)
    finally:
        await engine.dispose()
    return failure.value


@pytest.mark.parametrize("option", ["ssl", "sslmode"])
async def test_prefer_connects_to_a_server_without_tls(
    database_url: str, make_user: MakeUser, option: str
) -> None:
    """``ssl=prefer`` / ``sslmode=prefer`` fall back to a plain connection, as libpq does."""
    engine = create_engine(with_tls(database_url, **{option: "prefer"}))
    try:
        store = ChatStore(engine)
        user = await make_user()
        conversation = await store.create_conversation(user)
        assert (await store.get_conversation(user, conversation.id)).id == conversation.id
    finally:
        await engine.dispose()


async def test_unpooled_engine_reads_ssl_prefer(database_url: str) -> None:
    """The migrations' engine (create_unpooled_engine) takes the same ``ssl=`` form."""
    engine = create_unpooled_engine(with_tls(database_url, ssl="prefer"))
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize("option", ["ssl", "sslmode"])
async def test_required_tls_refused_names_the_host(database_url: str, option: str) -> None:
    """``require`` on a server without a verifiable TLS certificate: a typed error naming it."""
    url = with_tls(database_url, **{option: "require"})
    error = await failure_of(url)
    assert isinstance(error, DatabaseUnavailable)
    assert f"at {url.host}:{url.port or 5432}: " in str(error)
    assert isinstance(error.__cause__, OSError)  # the driver's own error, chained


async def test_refused_connection_names_host_port_and_reason() -> None:
    """A closed port: DatabaseUnavailable with host:port and "connection refused", no password."""
    port = closed_port()
    error = await failure_of(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/chat")
    assert isinstance(error, DatabaseUnavailable) and error.retryable
    message = str(error)
    assert f"could not connect to the database at 127.0.0.1:{port}: " in message
    assert "connection refused" in message
    assert PASSWORD not in message
    assert isinstance(error.__cause__, ConnectionRefusedError)


async def test_unknown_host_names_the_host() -> None:
    """A host name that does not resolve says so, with the name, and no password."""
    error = await failure_of(f"postgresql://app:{PASSWORD}@no-such-db.invalid:6543/chat")
    assert isinstance(error, DatabaseUnavailable)
    message = str(error)
    assert "at no-such-db.invalid:6543: could not resolve host 'no-such-db.invalid'" in message
    assert PASSWORD not in message
    assert isinstance(error.__cause__, socket.gaierror)


async def test_rejected_login_names_host_and_server_reason(database_url: str) -> None:
    """A login the server rejects: its reason and SQLSTATE with host:port, never the password."""
    role = f"no_such_role_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url).set(username=role, password=PASSWORD)
    error = await failure_of(url)
    assert isinstance(error, DatabaseError)
    message = str(error)
    assert f"could not connect to the database at {url.host}:{url.port or 5432}: " in message
    assert role in message  # the server's reason names the role
    assert error.sqlstate is not None and error.sqlstate.startswith("28")
    assert PASSWORD not in message
