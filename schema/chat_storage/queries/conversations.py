"""Conversation operations: statements, plans and query functions.

Every statement filters by the owner (``user_id``), so another user's
conversation behaves exactly like a missing one: same statement, same plan,
zero rows, ConversationNotFound.

Each operation is declared once, as its ``plan_<operation>`` function (arguments,
checks, docstring with ``Raises:``); the query function of the same name is
derived from it (:func:`~chat_storage.queries.base.query_function`), and
``ChatStore`` runs the same plan.
"""

from __future__ import annotations

import functools
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Interval,
    String,
    Uuid,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)

from ..cursor import Page, decode_list_cursor, encode_list_cursor
from ..errors import ConversationNotFound, InvalidInput
from ..models import Conversation, ConversationStatus
from ..validation import MAX_LIST_PAGE, check_limit, check_user_id, check_uuid
from .base import Conn, Plan, Row, Statement, plans, query_function
from .rows import CONVERSATION_COLUMNS, conversation_from_row

__all__ = [
    "Conn",
    "archive_conversation",
    "archive_inactive_batch",
    "create_conversation",
    "delete_conversation",
    "get_conversation",
    "list_conversations",
    "plan_archive_conversation",
    "plan_archive_inactive_batch",
    "plan_create_conversation",
    "plan_delete_conversation",
    "plan_get_conversation",
    "plan_list_conversations",
    "plan_restore_conversation",
    "plan_set_status",
    "restore_conversation",
]

_c = Conversation.__table__.c
_user_id = bindparam("p_user_id", type_=String)
_conversation_id = bindparam("p_conversation_id", type_=Uuid)


def _owned() -> Any:
    return (_c.id == _conversation_id) & (_c.user_id == _user_id)


@functools.cache
def _create() -> Statement:
    stmt = insert(Conversation).values(user_id=_user_id).returning(*CONVERSATION_COLUMNS)
    return Statement("create_conversation", "conversations", stmt)


@functools.cache
def _get() -> Statement:
    stmt = select(*CONVERSATION_COLUMNS).where(_owned())
    return Statement("get_conversation", "conversations", stmt)


@functools.cache
def _list(after: bool) -> Statement:
    # Served by idx_conversations_user_status_recent (user_id, status,
    # updated_at DESC, id DESC): an index range scan that stops after limit rows.
    stmt = select(*CONVERSATION_COLUMNS).where(
        _c.user_id == _user_id, _c.status == bindparam("p_status", type_=String)
    )
    if after:
        position = tuple_(
            bindparam("p_after_updated_at", type_=DateTime(timezone=True)),
            bindparam("p_after_id", type_=Uuid),
        )
        stmt = stmt.where(tuple_(_c.updated_at, _c.id) < position)
    stmt = stmt.order_by(_c.updated_at.desc(), _c.id.desc()).limit(
        bindparam("p_limit", type_=Integer)
    )
    return Statement("list_conversations", "conversations", stmt)


@functools.cache
def _set_status(status: ConversationStatus) -> Statement:
    stmt = (
        update(Conversation)
        .where(_owned())
        .values(status=literal_column(f"'{status.value}'"), updated_at=func.now())
        .returning(*CONVERSATION_COLUMNS)
    )
    name = (
        "archive_conversation" if status is ConversationStatus.ARCHIVED else "restore_conversation"
    )
    return Statement(name, "conversations", stmt)


@functools.cache
def _delete() -> Statement:
    stmt = delete(Conversation).where(_owned()).returning(_c.id)
    return Statement("delete_conversation", "conversations", stmt)


@functools.cache
def _archive_inactive() -> Statement:
    # One bounded batch: SKIP LOCKED so a conversation being written to is left
    # for the next run instead of making this job (or the writer) wait.
    batch = (
        select(_c.id)
        .where(
            _c.status == literal_column("'active'"),
            _c.updated_at < func.now() - bindparam("p_idle_for", type_=Interval),
        )
        .order_by(_c.updated_at)
        .limit(bindparam("p_batch_size", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("batch")
    )
    archived = (
        update(Conversation)
        .where(_c.id == batch.c.id)
        .values(status=literal_column("'archived'"), updated_at=func.now())
        .returning(_c.id)
        .cte("archived")
    )
    stmt = select(func.count().cast(BigInteger)).select_from(archived)
    return Statement("archive_inactive_conversations", "conversations", stmt)


def _one_conversation(rows: list[Row]) -> Conversation:
    if not rows:
        raise ConversationNotFound("conversation not found")
    return conversation_from_row(rows[0])


@plans(_create)
def plan_create_conversation(*, user_id: str) -> Plan[Conversation]:
    """Create an active conversation for ``user_id``.

    Raises:
        InvalidIdentifier: malformed user id.
        UserNotFound: ``user_id`` is not in the users table.
    """
    params = {"p_user_id": check_user_id(user_id)}
    return Plan(_create(), params, lambda rows: conversation_from_row(rows[0]))


@plans(_get)
def plan_get_conversation(*, user_id: str, conversation_id: uuid.UUID | str) -> Plan[Conversation]:
    """One of ``user_id``'s conversations.

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        ConversationNotFound: missing, or another user's.
    """
    params = {
        "p_user_id": check_user_id(user_id),
        "p_conversation_id": check_uuid(conversation_id, "conversation_id"),
    }
    return Plan(_get(), params, _one_conversation)


@plans(lambda: _list(False))
def plan_list_conversations(
    *,
    user_id: str,
    status: ConversationStatus | str = ConversationStatus.ACTIVE,
    limit: int = 50,
    cursor: str | None = None,
) -> Plan[Page[Conversation]]:
    """A page of ``user_id``'s conversations, most recently updated first.

    Pass a page's ``next_cursor`` as ``cursor`` for the page after it.

    Raises:
        InvalidInput: ``status`` is not 'active' or 'archived'.
        InvalidLimit: ``limit`` outside 1..MAX_LIST_PAGE (200).
        InvalidCursor: a cursor this listing did not produce, or another user's or status's.
    """
    try:
        status_value = ConversationStatus(status).value
    except ValueError:
        raise InvalidInput("status must be 'active' or 'archived'") from None
    limit = check_limit(limit, MAX_LIST_PAGE)
    # One row more than asked tells whether another page exists.
    params: dict[str, Any] = {
        "p_user_id": check_user_id(user_id),
        "p_status": status_value,
        "p_limit": limit + 1,
    }
    if cursor is not None:
        params["p_after_updated_at"], params["p_after_id"] = decode_list_cursor(
            cursor, params["p_user_id"], status_value
        )

    def finish(rows: list[Row]) -> Page[Conversation]:
        items = [conversation_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        last = items[-1] if more else None
        next_cursor = (
            encode_list_cursor(last.updated_at, last.id, params["p_user_id"], status_value)
            if last
            else None
        )
        return Page(items, next_cursor)

    return Plan(_list(cursor is not None), params, finish)


def plan_set_status(
    *, user_id: str, conversation_id: uuid.UUID | str, status: ConversationStatus
) -> Plan[Conversation]:
    """Set a conversation's status: :func:`plan_archive_conversation` or
    :func:`plan_restore_conversation` with the status as an argument.

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        ConversationNotFound: missing, or another user's.
    """
    params = {
        "p_user_id": check_user_id(user_id),
        "p_conversation_id": check_uuid(conversation_id, "conversation_id"),
    }
    return Plan(_set_status(status), params, _one_conversation)


@plans(lambda: _set_status(ConversationStatus.ARCHIVED))
def plan_archive_conversation(
    *, user_id: str, conversation_id: uuid.UUID | str
) -> Plan[Conversation]:
    """Archive a conversation: still readable, no longer appendable. Idempotent.

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        ConversationNotFound: missing, or another user's.
    """
    return plan_set_status(
        user_id=user_id, conversation_id=conversation_id, status=ConversationStatus.ARCHIVED
    )


@plans(lambda: _set_status(ConversationStatus.ACTIVE))
def plan_restore_conversation(
    *, user_id: str, conversation_id: uuid.UUID | str
) -> Plan[Conversation]:
    """Make an archived conversation active again. Idempotent.

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        ConversationNotFound: missing, or another user's.
    """
    return plan_set_status(
        user_id=user_id, conversation_id=conversation_id, status=ConversationStatus.ACTIVE
    )


@plans(_delete)
def plan_delete_conversation(*, user_id: str, conversation_id: uuid.UUID | str) -> Plan[None]:
    """Delete a conversation and all its messages (ON DELETE CASCADE).

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        ConversationNotFound: missing, or another user's.
    """
    params = {
        "p_user_id": check_user_id(user_id),
        "p_conversation_id": check_uuid(conversation_id, "conversation_id"),
    }

    def finish(rows: list[Row]) -> None:
        if not rows:
            raise ConversationNotFound("conversation not found")

    return Plan(_delete(), params, finish)


@plans(_archive_inactive)
def plan_archive_inactive_batch(*, idle_for: timedelta, batch_size: int = 1000) -> Plan[int]:
    """Archive one batch of up to ``batch_size`` conversations idle longer than
    ``idle_for``; the result is how many.

    Raises:
        InvalidInput: negative ``idle_for`` or a batch size outside 1..100000.
    """
    if not isinstance(idle_for, timedelta) or idle_for < timedelta(0):
        raise InvalidInput("idle_for must be a non-negative timedelta")
    params = {"p_idle_for": idle_for, "p_batch_size": check_limit(batch_size, 100_000)}
    return Plan(_archive_inactive(), params, lambda rows: int(rows[0][0]))


create_conversation = query_function(plan_create_conversation)
get_conversation = query_function(plan_get_conversation)
list_conversations = query_function(plan_list_conversations)
archive_conversation = query_function(plan_archive_conversation)
restore_conversation = query_function(plan_restore_conversation)
delete_conversation = query_function(plan_delete_conversation)
archive_inactive_batch = query_function(plan_archive_inactive_batch)
