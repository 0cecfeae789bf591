"""Run this package's Alembic migrations from Python (tests, the load harness, deploys).

The migrations live in the repository's ``alembic/`` directory beside this
package; they record their revision in ``chat_storage_alembic_version``, never
in the existing application's ``alembic_version``. These functions call
``asyncio.run`` (through alembic/env.py), so call them outside an event loop.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

__all__ = ["MigrationError", "alembic_config", "downgrade", "upgrade"]

_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


class MigrationError(RuntimeError):
    """Raised when a migration refuses to run (for example: no users table)."""


def alembic_config(url: str) -> Config:
    """An Alembic Config for our migrations against ``url``.

    Raises:
        MigrationError: the alembic directory is not beside the package (not a checkout).
    """
    if not _INI.exists():
        raise MigrationError(f"alembic.ini not found at {_INI}; run from a source checkout")
    config = Config(str(_INI))
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
