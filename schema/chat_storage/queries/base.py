"""The plan layer: what every chat operation is made of, public for your own connection.

An operation is a :class:`Plan`: a compiled :class:`Statement`, its validated
parameters and the function that turns the returned rows into the public
result. Each ``plan_<operation>`` function (``chat_storage.queries.messages``,
``.conversations``) validates its arguments, raises ``InvalidInput`` before
anything is sent, and is the one place the operation is declared: its
arguments, its checks and its ``Raises:``. Three runners share it:

* ``ChatStore.<operation>`` runs the plan on a pooled asyncpg connection, one
  round trip with no BEGIN/COMMIT (chat_storage/_execution.py);
* the query function ``chat_storage.queries.<operation>`` runs it through
  SQLAlchemy on a caller's AsyncConnection or AsyncSession (:func:`execute`,
  inside whatever transaction the caller holds; made by :func:`query_function`);
* your own connection (bring your own connection: raw asyncpg, as the load
  tests' reference does): send ``plan.statement.compile()[0]`` with
  ``*plan.args()`` and pass the rows to ``plan.finish``, or hand
  :meth:`Plan.run` a function that does the sending.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.expression import Executable

from ..errors import translate_errors

__all__ = [
    "Conn",
    "Fetch",
    "Plan",
    "Row",
    "Statement",
    "execute",
    "operation_name",
    "plans",
    "query_function",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
#: A fetched row: an asyncpg Record or a SQLAlchemy Row; read by position only.
Row = Sequence[Any]
#: What the query functions run on: the caller's connection or session.
Conn = AsyncConnection | AsyncSession
#: Sends a plan's statement (one round trip) and returns its rows.
Fetch = Callable[["Plan[Any]"], Awaitable[list[Row]]]


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

    async def run(self, fetch: Fetch) -> R:
        """Send the statement with ``fetch`` and finish its rows.

        Raises:
            ChatStoreError: what ``finish`` raises for the rows (not found, ...).
            Exception: whatever ``fetch`` raises, unchanged.
        """
        return self.finish(await fetch(self))


async def execute(conn: Conn, plan: Plan[R]) -> R:
    """Run ``plan`` through SQLAlchemy on the caller's connection or session.

    Raises:
        ChatStoreError: the database's error, translated; or the plan's own.
    """
    if isinstance(conn, AsyncSession):
        # The session's own connection: the same transaction, without the ORM's
        # execution path (SQLModel's AsyncSession also deprecates execute()).
        # Flush first, as session.execute() would, so the caller's pending rows
        # (a new user, say) are visible to the statement.
        if conn.autoflush:
            await conn.flush()
        conn = await conn.connection()
    connection = conn

    async def fetch(plan: Plan[Any]) -> list[Row]:
        with translate_errors():
            result = await connection.execute(plan.statement.clause, plan.params)
            return list(result.all())

    return await plan.run(fetch)


# Plan function -> the statement it plans (see plans()).
_PLANNED: dict[Callable[..., Any], Callable[[], Statement]] = {}


def plans(statement: Callable[[], Statement]) -> Callable[[F], F]:
    """Mark a plan function with the statement it plans; the function is not wrapped.

    Read only when a call is rejected (:func:`operation_name`), so that a
    rejection is counted under the same operation name as the statement's runs.
    """

    def mark(planner: F) -> F:
        _PLANNED[planner] = statement
        return planner

    return mark


def operation_name(planner: Callable[..., Plan[Any]]) -> str:
    """The name of the statement ``planner`` plans (its operation, for metrics).

    Raises:
        KeyError: ``planner`` is not marked with :func:`plans`.
    """
    return _PLANNED[planner]().name


@overload
def query_function(
    planner: Callable[P, Plan[R]],
) -> Callable[Concatenate[Conn, P], Coroutine[Any, Any, R]]: ...
@overload
def query_function(
    planner: Callable[P, Plan[T]], result: Callable[[T], R]
) -> Callable[Concatenate[Conn, P], Coroutine[Any, Any, R]]: ...
def query_function(
    planner: Callable[P, Plan[Any]], result: Callable[[Any], Any] | None = None
) -> Callable[Concatenate[Conn, P], Coroutine[Any, Any, Any]]:
    """The query function of ``planner``: plan, then :func:`execute` on the caller's
    connection, and (``result``) pick the public result out of the plan's.

    It takes the connection first and the plan function's keyword arguments
    after it, and carries the plan function's docstring, so an operation's
    arguments, checks and ``Raises:`` are written once.
    """

    async def run(conn: Conn, *args: P.args, **kwargs: P.kwargs) -> Any:
        done = await execute(conn, planner(*args, **kwargs))
        return done if result is None else result(done)

    name = planner.__name__.removeprefix("plan_")
    run.__name__ = name
    run.__qualname__ = name
    run.__module__ = planner.__module__
    run.__doc__ = planner.__doc__
    signature = inspect.signature(planner)
    conn = inspect.Parameter("conn", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Conn")
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[conn, *signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    # Typed with the connection positional-only (Concatenate's rule), while at
    # run time ``conn=`` is accepted too, as the hand-written functions did.
    return run  # type: ignore[return-value]
