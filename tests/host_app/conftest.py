"""A SQLModel host application with its own Alembic history, beside chat_storage.

``host_config`` is the host's Alembic Config (its script directory here, its
own ``alembic_version``); ``host_database_url`` is a database where both
histories are applied in the documented order: the host's first, then ours.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from chat_storage import migrations
from devdb import ServerInfo, scratch_database
from tests.host_app.models import User

HOST_MIGRATIONS = Path(__file__).resolve().parent / "host_migrations"


def async_url(url: str) -> str:
    """The host's SQLAlchemy URL (asyncpg driver) for a plain postgresql:// URL."""
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def host_config(url: str, script_location: Path = HOST_MIGRATIONS) -> Config:
    """The host application's Alembic Config, as its alembic.ini would give it."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def copy_host_env(tmp_path: Path, replace: dict[str, str]) -> Path:
    """A copy of the host's script directory with ``env.py`` edited (each old text must exist)."""
    target = tmp_path / "host_migrations"
    shutil.copytree(HOST_MIGRATIONS, target, ignore=shutil.ignore_patterns("__pycache__"))
    env = target / "env.py"
    text = env.read_text()
    for old, new in replace.items():
        assert old in text, f"env.py no longer contains {old!r}"
        text = text.replace(old, new)
    env.write_text(text)
    return target


@pytest.fixture
def blank_database_url(pg_server: ServerInfo) -> Iterator[str]:
    """A fresh empty database: the host's migrations have not run yet."""
    with scratch_database(pg_server.url, prefix="chat_host") as url:
        yield url


@pytest.fixture(scope="session")
def host_database_url(pg_server: ServerInfo) -> Iterator[str]:
    """Both histories at head, applied in the documented order: the host's, then ours."""
    with scratch_database(pg_server.url, prefix="chat_host_app") as url:
        command.upgrade(host_config(url), "head")
        migrations.upgrade(url)
        yield url


@pytest.fixture(scope="session")
async def host_engine(host_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The host application's own engine (not chat_storage.create_engine)."""
    engine = create_async_engine(async_url(host_database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def host_user(host_engine: AsyncEngine) -> User:
    """A committed user of the host application, created through its own model."""
    user = User(id=f"user-{uuid.uuid4()}", email=f"{uuid.uuid4()}@example.com")
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        session.add(user)
        await session.commit()
    return user
