"""Least privilege: what the application's database role needs, and nothing more.

Migrations run as a role that owns the schema; the application connects as a
role that may only read and write rows of our two tables. It needs no right on
``users``: PostgreSQL checks foreign keys with the table owner's rights. It
cannot create, alter or drop anything, nor read the application's other tables.
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPLICATION_GRANTS", "grant_statements"]

#: Table rights of the application role, per table.
APPLICATION_GRANTS: Final = {
    "conversations": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "messages": ("SELECT", "INSERT", "UPDATE", "DELETE"),
}


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def grant_statements(role: str, *, schema: str = "public") -> list[str]:
    """The GRANTs that give ``role`` exactly the application's rights (run as the owner).

    On PostgreSQL 14 and older, also revoke CREATE on the schema from PUBLIC (the
    default there lets every role create tables); 15 and newer already do.
    """
    statements = [f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {_quote(role)}"]
    for table, rights in APPLICATION_GRANTS.items():
        statements.append(
            f"GRANT {', '.join(rights)} ON {_quote(schema)}.{_quote(table)} TO {_quote(role)}"
        )
    return statements
