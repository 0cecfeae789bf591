"""What every chat operation is made of: a compiled statement, its parameters,
and a function that turns the returned rows into the public result.

An operation is planned (arguments validated, parameters built) before anything
is sent, then run by one of two executors:

* :func:`execute` runs it through SQLAlchemy on a caller's AsyncConnection or
  AsyncSession, inside whatever transaction the caller holds;
* ``ChatStore`` runs the same SQL prepared on the pooled asyncpg connection, with
  no BEGIN/COMMIT around it (see store.py for why).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.expression import Executable

from ..errors import translate_errors

R = TypeVar("R")
#: A fetched row: an asyncpg Record or a SQLAlchemy Row; read by position only.
Row = Sequence[Any]


@functools.cache
def _dialect() -> PGDialect_asyncpg:
    return PGDialect_asyncpg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


class Statement:
    """A Core statement and, compiled once on first use, its asyncpg SQL text.

    Bind parameters are named ``p_<name>``, never a column's name: SQLAlchemy
    treats an execution parameter named like a column of an INSERT or UPDATE
    as an extra value to SET.
    """

    __slots__ = ("_attributes", "_names", "_sql", "clause", "collection", "name")

    def __init__(self, name: str, collection: str, clause: Executable) -> None:
        self.name = name
        #: The table the statement is about, for the span's db.collection.name.
        self.collection = collection
        self.clause = clause
        self._sql: str | None = None
        self._names: tuple[str, ...] = ()
        self._attributes: dict[str, str] | None = None

    def span_attributes(self) -> dict[str, str]:
        """OpenTelemetry's stable database attributes for this statement (built once)."""
        if self._attributes is None:
            self._attributes = {
                "db.system.name": "postgresql",
                "db.operation.name": self.name,
                "db.collection.name": self.collection,
                # The text has $n placeholders only, never values.
                "db.query.text": self.compile()[0],
            }
        return self._attributes

    def compile(self) -> tuple[str, tuple[str, ...]]:
        """The SQL text with ``$n`` placeholders and the parameter name for each n."""
        if self._sql is None:
            compiled = self.clause.compile(dialect=_dialect())  # type: ignore[attr-defined]
            names = tuple(compiled.positiontup or ())
            anonymous = [n for n in names if n not in compiled.binds or compiled.binds[n].unique]
            if anonymous:
                # Constants must be literal_column()s, so each call binds only its arguments.
                raise AssertionError(f"{self.name}: anonymous bind parameters {anonymous}")
            self._names = names
            self._sql = str(compiled)
        return self._sql, self._names


@dataclass(frozen=True, slots=True)
class Plan(Generic[R]):
    """A validated operation, ready to run: nothing has been sent yet."""

    statement: Statement
    params: dict[str, Any]
    finish: Callable[[list[Row]], R]

    def args(self) -> list[Any]:
        """The parameters in ``$1..$n`` order, for the driver."""
        _, names = self.statement.compile()
        params = self.params
        return [params[n] for n in names]


async def execute(conn: AsyncConnection | AsyncSession, plan: Plan[R]) -> R:
    """Run ``plan`` through SQLAlchemy on the caller's connection or session.

    Raises:
        ChatStoreError: the database's error, translated.
    """
    if isinstance(conn, AsyncSession):
        # The session's own connection: the same transaction, without the ORM's
        # execution path (SQLModel's AsyncSession also deprecates execute()).
        # Flush first, as session.execute() would, so the caller's pending rows
        # (a new user, say) are visible to the statement.
        if conn.autoflush:
            await conn.flush()
        conn = await conn.connection()
    with translate_errors():
        result = await conn.execute(plan.statement.clause, plan.params)
        rows: list[Row] = list(result.all())
    return plan.finish(rows)
