"""Least privilege, secrets and TLS."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import make_url

from chat_storage import ChatStore, ChatStoreError, Settings, StoreMetrics, create_engine
from chat_storage.engine import _connect_args, build_ssl_context, redact, to_asyncpg_url
from chat_storage.privileges import grant_statements
from tests.conftest import MakeUser

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-Pa55-" + uuid.uuid4().hex[:6]
NEON = (
    f"postgresql://alex:{PASSWORD}@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech"
    "/neondb?sslmode=require&channel_binding=require"
)


@pytest.fixture
async def app_role(database_url: str, admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role with only the application's grants; dropped afterwards."""
    role = f"chat_app_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    for statement in grant_statements(role):
        await admin.execute(statement)
    yield make_url(database_url).set(username=role).render_as_string(hide_password=False)
    await admin.execute(f'DROP OWNED BY "{role}"')
    await admin.execute(f'DROP ROLE "{role}"')


async def test_application_role_can_chat(app_role: str, make_user: MakeUser) -> None:
    """With only the grants, every chat operation works (foreign keys included)."""
    engine = create_engine(database_url=app_role, pool_size=1)
    try:
        store = ChatStore(engine)
        user = await make_user()
        conversation = await store.create_conversation(user)
        await store.add_message(user, conversation.id, "user", "hello")
        assert (await store.get_history(user, conversation.id)).items[0].content == "hello"
        await store.archive_conversation(user, conversation.id)
        await store.delete_conversation(user, conversation.id)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "DROP TABLE messages",
        "ALTER TABLE conversations ADD COLUMN x int",
        "CREATE INDEX intruder_idx ON messages (content)",
        "SELECT * FROM tasks",
        "SELECT * FROM users",
        "DELETE FROM users",
    ],
)
async def test_application_role_cannot_change_schema_or_read_other_tables(
    app_role: str, statement: str
) -> None:
    """DDL and access to the application's own tables fail with insufficient privilege."""
    conn = await asyncpg.connect(app_role)
    try:
        with pytest.raises(
            (asyncpg.InsufficientPrivilegeError, asyncpg.exceptions.InsufficientPrivilegeError)
        ):
            await conn.execute(statement)
    finally:
        await conn.close()


def test_neon_url_keeps_certificate_verification() -> None:
    """sslmode=require builds a context that verifies the chain and the host name."""
    settings = Settings(database_url=NEON)
    args = _connect_args(settings, to_asyncpg_url(NEON), pooler=True)
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert "channel_binding" not in args and "channel_binding" not in str(args)


def test_verify_ca_checks_chain_but_not_host() -> None:
    """verify-ca verifies the certificate chain, like libpq, without the host name."""
    context = build_ssl_context("verify-ca")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname


def test_neon_url_is_accepted_as_pasted() -> None:
    """The pasted URL maps to asyncpg with libpq-only options removed, pooler mode detected."""
    url = to_asyncpg_url(NEON)
    assert url.drivername == "postgresql+asyncpg"
    assert dict(url.query) == {}
    engine = create_engine(database_url=NEON)
    from chat_storage.engine import engine_pooler_mode

    assert engine_pooler_mode(engine)


def test_password_never_in_reprs() -> None:
    """Settings, engines and redacted URLs never show the password."""
    settings = Settings(database_url=NEON)
    engine = create_engine(settings)
    for text in (repr(settings), repr(engine), str(engine.url), redact(NEON)):
        assert PASSWORD not in text


async def test_failed_connection_leaks_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection failure's error, logs, metrics and spans never contain the password."""
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url = f"postgresql://chat:{PASSWORD}@127.0.0.1:9/chat?sslmode=disable"  # nothing listens on 9
    engine = create_engine(database_url=url, connect_timeout=2)
    store = ChatStore(engine, metrics=StoreMetrics(registry), tracer_provider=provider)
    with pytest.raises(ChatStoreError) as raised:
        await store.list_conversations("someone")
    await engine.dispose()
    error = raised.value
    chain = []
    current: BaseException | None = error
    while current is not None:
        chain.append(f"{type(current).__name__}: {current!r} {current}")
        current = current.__cause__ or current.__context__
    outputs = [
        *chain,
        caplog.text,
        generate_latest(registry).decode(),
        *(repr(dict(s.attributes or {})) + repr(s.events) for s in exporter.get_finished_spans()),
    ]
    for output in outputs:
        assert PASSWORD not in output
    assert error.retryable


def test_migration_failure_output_has_no_password() -> None:
    """The alembic command's failure output does not echo the password from DATABASE_URL."""
    url = f"postgresql://chat:{PASSWORD}@127.0.0.1:9/chat?sslmode=disable"
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert PASSWORD not in result.stdout + result.stderr
