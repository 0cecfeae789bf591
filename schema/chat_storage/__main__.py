"""The command line: ``python -m chat_storage`` (or the ``chat-storage`` script).

Usage::

    chat-storage migrate upgrade [REV] [--url URL] [--sql]
    chat-storage migrate downgrade REV [--url URL] [--sql]
    chat-storage migrate current [--url URL]
    chat-storage migrate history

The URL defaults to CHAT_STORAGE_MIGRATION_URL, then DATABASE_URL. ``--sql``
prints the DDL for review and connects to nothing. A failure prints one line
on standard error and exits 1; a usage mistake exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import migrations

__all__ = ["main"]

PROG = "chat-storage"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Storage for an AI chatbot's conversations on PostgreSQL."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = commands.add_parser(
        "migrate",
        help="create, upgrade or drop the conversations and messages tables",
        description=(
            "Our migrations, beside the application's own: they need its users table "
            "and record their revision in chat_storage_alembic_version."
        ),
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")

    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        help="database URL of a role that may create tables "
        "(default: CHAT_STORAGE_MIGRATION_URL, then DATABASE_URL)",
    )
    sql = argparse.ArgumentParser(add_help=False)
    sql.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL for review instead of running it (no connection is made)",
    )

    up = actions.add_parser("upgrade", parents=[url, sql], help="apply migrations (to head)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    down = actions.add_parser("downgrade", parents=[url, sql], help="revert migrations")
    down.add_argument("revision", help="target revision; 'base' drops both tables")
    actions.add_parser("current", parents=[url], help="the revision the database is at")
    actions.add_parser("history", help="the revisions this package ships")
    return parser


def _url(given: str | None) -> str | None:
    return (
        given
        or os.environ.get("CHAT_STORAGE_MIGRATION_URL")
        or os.environ.get("DATABASE_URL")
        or None
    )


def _migrate(args: argparse.Namespace) -> None:
    if args.action == "history":
        for line in migrations.history():
            print(line)
        return
    url = _url(args.url)
    if args.action == "current":
        revisions = migrations.current(url)
        heads = set(migrations.heads())
        for revision in revisions:
            print(f"{revision} (head)" if revision in heads else revision)
        if not revisions:
            print("none: no chat_storage migration has been applied")
        return
    # With --sql and no URL nothing connects; a URL, if set, is not used either.
    target = None if args.sql else url
    if args.action == "upgrade":
        migrations.upgrade(target, args.revision, sql=args.sql)
    else:
        migrations.downgrade(target, args.revision, sql=args.sql)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Raises:
        SystemExit: a usage mistake (status 2) or ``--help`` (status 0).
    """
    args = _parser().parse_args(argv)
    # Alembic says which revision it runs ("Running upgrade 001 -> 002") on its
    # logger; show those lines on stderr, so --sql output on stdout stays SQL.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # Only the steps: "Context impl PostgresqlImpl." and the like are noise here.
    handler.addFilter(lambda record: record.getMessage().startswith("Running"))
    alembic_log = logging.getLogger("alembic.runtime.migration")
    alembic_log.addHandler(handler)
    alembic_log.setLevel(logging.INFO)
    alembic_log.propagate = False
    try:
        _migrate(args)
    except migrations.MigrationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `... --sql | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        alembic_log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
