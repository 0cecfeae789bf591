"""Run this package's Alembic migrations from Python (tests, the load harness, deploys).

The migrations ship inside this package (``chat_storage/_migrations``, Alembic's
script directory; a checkout's top-level ``alembic/`` links to it); they record
their revision in ``chat_storage_alembic_version``, never in the existing
application's ``alembic_version``. These functions call ``asyncio.run`` (through
the script directory's env.py), so call them outside an event loop.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

__all__ = ["MigrationError", "alembic_config", "downgrade", "upgrade"]

_SCRIPT_LOCATION = Path(__file__).resolve().parent / "_migrations"
_VERSION_TABLE = "chat_storage_alembic_version"


class MigrationError(RuntimeError):
    """Raised when a migration refuses to run (for example: no users table)."""


def alembic_config(url: str) -> Config:
    """An Alembic Config for our migrations against ``url`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    config.set_main_option("version_table", _VERSION_TABLE)
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply our migrations up to ``revision``.

    Raises:
        MigrationError: a migration refused, e.g. the users table is missing.
    """
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc


def downgrade(url: str, revision: str = "base") -> None:
    """Revert our migrations down to ``revision`` (``base``: drop both tables).

    Raises:
        MigrationError: Alembic refused the downgrade.
    """
    try:
        command.downgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc
