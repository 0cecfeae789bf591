"""Run this package's Alembic migrations from Python (deploys, tests, the load harness).

The migrations ship inside this package (``chat_storage/_migrations``, Alembic's
script directory; a checkout's top-level ``alembic/`` links to it), so an installed
wheel needs no alembic.ini. They record their revision in
``chat_storage_alembic_version``, never in the existing application's
``alembic_version``. Usage::

    from chat_storage import migrations

    migrations.upgrade("postgresql://owner@db/app")              # to head
    migrations.upgrade(None, sql=True)                           # print the DDL only
    migrations.downgrade("postgresql://owner@db/app", "base")    # drop both tables

The same from a shell: ``python -m chat_storage migrate upgrade`` (see ``__main__``).
These functions call ``asyncio.run`` (through the script directory's env.py), so
call them outside an event loop.

Every failure is one :class:`MigrationError`, one line long::

    MigrationError            a migration or Alembic refused (unknown revision, failed statement)
    ├── NoDatabaseURL         no URL was given and none is in the environment
    ├── DatabaseUnreachable   the server did not accept a connection
    ├── UsersTableMissing     the application's users table is not there
    └── UsersTableIncompatible users.id cannot be referenced by our VARCHAR(255) user_id

They subclass Alembic's ``CommandError``, which the ``alembic`` command prints as
one line instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

__all__ = [
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "DatabaseUnreachable",
    "MigrationError",
    "NoDatabaseURL",
    "UsersTableIncompatible",
    "UsersTableMissing",
    "alembic_config",
    "current",
    "downgrade",
    "heads",
    "history",
    "upgrade",
]

SCRIPT_LOCATION: Final = str(Path(__file__).resolve().parent / "_migrations")
VERSION_TABLE: Final = "chat_storage_alembic_version"


class MigrationError(CommandError):
    """Raised when a migration cannot run; the message is one line saying why."""


class NoDatabaseURL(MigrationError):
    """Raised when no database URL was given and none is set in the environment."""


class DatabaseUnreachable(MigrationError):
    """Raised when the database server refuses, or never answers, the connection."""


class UsersTableMissing(MigrationError):
    """Raised when the application's ``users`` table, which ours reference, is missing."""


class UsersTableIncompatible(MigrationError):
    """Raised when ``users.id`` is not a unique VARCHAR/TEXT column our foreign keys can use."""


def alembic_config(url: str | None, *, output: TextIO | None = None) -> Config:
    """An Alembic Config for our migrations against ``url`` (no alembic.ini needed).

    Args:
        url: the database URL; None only for offline (``sql``) runs.
        output: where offline SQL is written; default standard output.
    """
    config = Config(output_buffer=output, stdout=output or sys.stdout)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("version_table", VERSION_TABLE)
    if url is not None:
        config.attributes["url"] = url
    return config


def _run(action: Callable[[], Any]) -> Any:
    # Alembic's own refusals (an unknown revision, a multiple-heads mix-up) are
    # CommandErrors; ours already are MigrationErrors and pass through unchanged.
    try:
        return action()
    except MigrationError:
        raise
    except CommandError as exc:
        raise MigrationError(_one_line(exc)) from exc


def _require_url(url: str | None, sql: bool) -> None:
    if url is None and not sql:
        raise NoDatabaseURL(
            "no database URL: pass one (--url), or set CHAT_STORAGE_MIGRATION_URL or DATABASE_URL"
        )


def upgrade(
    url: str | None, revision: str = "head", *, sql: bool = False, output: TextIO | None = None
) -> None:
    """Apply our migrations up to ``revision``.

    Args:
        url: the database URL (an owner role); may be None when ``sql`` is true.
        revision: target revision, ``head`` by default; with ``sql``,
            ``FROM:TO`` starts the script at ``FROM`` instead of the empty schema.
        sql: write the DDL to ``output`` for review instead of running it; no
            connection is opened.
        output: where ``sql`` writes; default standard output.

    Raises:
        NoDatabaseURL: ``url`` is None and ``sql`` is false.
        DatabaseUnreachable: the server did not accept the connection.
        UsersTableMissing: the application's users table is not there.
        UsersTableIncompatible: users.id is not a unique VARCHAR/TEXT column.
        MigrationError: any other refusal or failed statement (nothing of that
            migration is kept).
    """
    _require_url(url, sql)
    config = alembic_config(url, output=output)
    _run(lambda: command.upgrade(config, revision, sql=sql))


def downgrade(
    url: str | None, revision: str = "base", *, sql: bool = False, output: TextIO | None = None
) -> None:
    """Revert our migrations down to ``revision`` (``base``: drop both tables).

    Args:
        url: the database URL (an owner role); may be None when ``sql`` is true.
        revision: target revision; with ``sql``, the script starts at ``head``
            unless ``FROM:TO`` is given.
        sql: write the DDL to ``output`` for review instead of running it.
        output: where ``sql`` writes; default standard output.

    Raises:
        NoDatabaseURL: ``url`` is None and ``sql`` is false.
        DatabaseUnreachable: the server did not accept the connection.
        MigrationError: Alembic refused the downgrade, or a statement failed.
    """
    _require_url(url, sql)
    if sql and ":" not in revision:
        # Offline, Alembic cannot read where the database is; reviewing a
        # downgrade means reviewing it from the newest revision.
        revision = f"head:{revision}"
    config = alembic_config(url, output=output)
    _run(lambda: command.downgrade(config, revision, sql=sql))


def current(url: str | None) -> list[str]:
    """The revisions the database at ``url`` is at (empty: none of ours applied).

    Raises:
        NoDatabaseURL: ``url`` is None.
        DatabaseUnreachable: the server did not accept the connection.
        MigrationError: the recorded revision is not one this package knows.
    """
    _require_url(url, sql=False)
    config = alembic_config(url)
    script = ScriptDirectory.from_config(config)
    found: list[str] = []

    def record(rev: Any, context: Any) -> Iterable[Any]:
        found.extend(r.revision for r in script.get_all_current(rev))
        return []

    def run() -> None:
        with EnvironmentContext(config, script, fn=record, dont_mutate=True):
            script.run_env()

    _run(run)
    return found


def heads() -> list[str]:
    """The newest revisions this package ships (one: the history is linear)."""
    return list(ScriptDirectory.from_config(alembic_config(None)).get_heads())


def history() -> list[str]:
    """Our revisions, newest first, one line each (``003 -> 004 (head), Add the ...``)."""
    script = ScriptDirectory.from_config(alembic_config(None))
    return [
        rev.cmd_format(verbose=False, include_doc=True, include_parents=True)
        for rev in script.walk_revisions()
    ]


def _one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
