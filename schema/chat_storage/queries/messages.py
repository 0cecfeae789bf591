"""Message operations: append (one statement) and history (keyset pages).

``add_message`` is one statement of four parts, so it is one round trip and
atomic without an explicit transaction:

* ``taken``: the message already stored under this ``message_id``, if any: a
  replay when it is the caller's and says the same (role, content, metadata), a
  conflict otherwise, and no write either way;
* ``bumped``: ``UPDATE conversations SET last_seq = last_seq + 1, updated_at =
  now()`` for the owner's *active* conversation, unless the id is taken; the row
  lock it takes serialises appends to one conversation, so ``seq`` is gap-free
  in write order;
* ``inserted``: the message, numbered with the new ``last_seq``;
* a final UNION that returns the inserted row, the replayed row, or (when
  neither) the conversation's status, which tells "archived" from "not found".

When two calls with the same new ``message_id`` race, the loser's statement
sees neither a free id nor a stored row; its plan runs once more (see
``_AppendPlan``), and then replays the winner's message.

Each operation is declared once, as its ``plan_<operation>`` function; the query
function of the same name is derived from it and ``ChatStore`` runs the same plan.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    Uuid,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from ..cursor import Page, decode_history_cursor, encode_history_cursor
from ..errors import ConversationArchived, ConversationNotFound, IdempotencyConflict
from ..models import Conversation, Message, MessageRole
from ..validation import (
    MAX_HISTORY_PAGE,
    check_content,
    check_limit,
    check_role,
    check_user_id,
    check_uuid,
    encode_metadata,
)
from .base import Fetch, Plan, Row, Statement, plans, query_function
from .rows import MESSAGE_COLUMNS, message_from_row

__all__ = ["add_message", "get_history", "plan_add_message", "plan_get_history"]

_c = Conversation.__table__.c
_m = Message.__table__.c
_user_id = bindparam("p_user_id", type_=String)
_conversation_id = bindparam("p_conversation_id", type_=Uuid)
_message_id = bindparam("p_message_id", type_=Uuid)
_role = bindparam("p_role", type_=String)
_content = bindparam("p_content", type_=Text)
# JSON text in, so both executors bind the same value (no double encoding).
_metadata = cast(bindparam("p_metadata", type_=Text), JSONB)
_NO_CURSOR: Final = 2**63 - 1  # before any seq: the newest page
_ID_TAKEN: Final = "message_id is already used by another user"
_ID_CHANGED: Final = (
    "message_id was already used for a different message (role, content or metadata differ)"
)


class _RetryAppend(Exception):
    """A concurrent call inserted the same message_id first; run the plan again."""


class _AppendPlan(Plan[tuple[Message, bool]]):
    """The append's plan: run once more after losing a race for its message_id."""

    __slots__ = ()

    async def run(self, fetch: Fetch) -> tuple[Message, bool]:
        """Send the append with ``fetch`` and finish its row; once more after a race.

        Raises:
            IdempotencyConflict: the race was lost twice (the id is another user's).
        """
        try:
            return self.finish(await fetch(self))
        except _RetryAppend:
            pass
        # Once: now the other call's row is visible (READ COMMITTED) and replays.
        try:
            return self.finish(await fetch(self))
        except _RetryAppend:
            raise IdempotencyConflict(_ID_TAKEN) from None


@functools.cache
def _add() -> Statement:
    # Any user's message under this id: a replay only if it is the caller's, a
    # conflict otherwise; either way nothing is bumped or inserted.
    taken = select(*MESSAGE_COLUMNS).where(_m.id == _message_id).cte("taken")
    id_is_free = ~select(taken.c.id).exists()
    bumped = (
        update(Conversation)
        .where(
            _c.id == _conversation_id,
            _c.user_id == _user_id,
            _c.status == literal_column("'active'"),
            id_is_free,
        )
        .values(last_seq=_c.last_seq + literal_column("1"), updated_at=func.now())
        .returning(_c.id, _c.last_seq)
        .cte("bumped")
    )
    row = select(
        _message_id,
        bumped.c.id,
        _user_id,
        _role,
        _content,
        _metadata,
        bumped.c.last_seq,
    )
    inserted = (
        insert(Message)
        .from_select(
            ["id", "conversation_id", "user_id", "role", "content", "metadata", "seq"], row
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(*MESSAGE_COLUMNS)
        .cte("inserted")
    )
    nothing = [null() for _ in MESSAGE_COLUMNS]
    why = case((~id_is_free, literal_column("'taken'")), else_=_c.status)
    # A retry must say what the first call said: compared as stored (jsonb
    # equality, so key order, spacing and 1.0 vs 1 do not count as a change).
    same = (
        (taken.c.role == _role)
        & (taken.c.content == _content)
        & taken.c.metadata.is_not_distinct_from(_metadata)
    )
    changed = case((same, null()), else_=literal_column("'changed'"))
    stmt = union_all(
        select(literal_column("'inserted'"), null(), *inserted.c),
        select(literal_column("'replayed'"), changed, *taken.c).where(taken.c.user_id == _user_id),
        select(literal_column("'refused'"), why, *nothing).where(
            _c.id == _conversation_id,
            _c.user_id == _user_id,
            ~select(inserted.c.id).exists(),
            # A replay of the caller's own message has been answered above.
            ~select(taken.c.id).where(taken.c.user_id == _user_id).exists(),
        ),
    )
    return Statement("add_message", "messages", stmt)


@functools.cache
def _history() -> Statement:
    # The owner check and the page in one statement: zero rows means no such
    # conversation for this user; one all-NULL message means an empty one.
    page = (
        select(*MESSAGE_COLUMNS)
        # The parameter, not conversations.id: the planner then estimates this
        # conversation's own row count (a long one is walked in seq order and
        # stopped after limit rows) instead of the table's average.
        .where(
            _m.conversation_id == _conversation_id,
            _m.seq < bindparam("p_before", type_=BigInteger),
        )
        .order_by(_m.seq.desc())
        .limit(bindparam("p_limit", type_=Integer))
        .lateral("page")
    )
    stmt = (
        select(_c.id, *page.c)
        .select_from(Conversation.__table__.outerjoin(page, true()))
        .where(_c.id == _conversation_id, _c.user_id == _user_id)
    )
    return Statement("get_history", "messages", stmt)


@plans(_add)
def plan_add_message(
    *,
    user_id: str,
    conversation_id: uuid.UUID | str,
    role: MessageRole | str,
    content: str,
    metadata: dict[str, Any] | None = None,
    message_id: uuid.UUID | str | None = None,
) -> Plan[tuple[Message, bool]]:
    """Append a message and bump the conversation's ``updated_at``, atomically.

    Pass ``message_id`` (a UUID you generate) to make retries safe: a retry
    after a timeout or a cancellation returns the stored message and never
    writes a duplicate. A retry must repeat the same role, content and
    metadata: a changed one is refused, not taken for the first.
    Inside a caller's transaction, the conversation row stays locked until that
    transaction ends (appends to it queue behind it). The plan's result is the
    message and whether it was replayed; the operations return the message.

    Raises:
        InvalidInput: a rejected argument (see validation.py); nothing was sent.
        ConversationNotFound: missing, or another user's.
        ConversationArchived: the conversation is archived.
        IdempotencyConflict: ``message_id`` is taken by another conversation or
            user, or was stored with another role, content or metadata.
    """
    checked_role = check_role(role)
    conversation = check_uuid(conversation_id, "conversation_id")
    params = {
        "p_user_id": check_user_id(user_id),
        "p_conversation_id": conversation,
        "p_role": checked_role.value,
        "p_content": check_content(checked_role, content),
        "p_metadata": encode_metadata(metadata),
        # Chosen here rather than by DEFAULT gen_random_uuid(), so every call is
        # the same statement and a caller-supplied id needs no other path.
        "p_message_id": uuid.uuid4()
        if message_id is None
        else check_uuid(message_id, "message_id"),
    }

    def finish(rows: list[Row]) -> tuple[Message, bool]:
        if not rows:
            raise ConversationNotFound("conversation not found")
        row = rows[0]
        outcome = row[0]
        if outcome == "refused":
            if row[1] == "taken":
                raise IdempotencyConflict(_ID_TAKEN)
            if row[1] == "archived":
                raise ConversationArchived("conversation is archived; restore it to append")
            # Active and the id was free when the statement began, yet nothing was
            # inserted: a concurrent call with the same message_id inserted first.
            raise _RetryAppend
        message = message_from_row(row, 2)
        if outcome == "replayed":
            if message.conversation_id != conversation:
                raise IdempotencyConflict("message_id was already used in another conversation")
            if row[1] is not None:
                raise IdempotencyConflict(_ID_CHANGED)
            return message, True
        return message, False

    return _AppendPlan(_add(), params, finish)


@plans(_history)
def plan_get_history(
    *,
    user_id: str,
    conversation_id: uuid.UUID | str,
    limit: int = 20,
    cursor: str | None = None,
) -> Plan[Page[Message]]:
    """The latest ``limit`` messages older than ``cursor``, returned oldest first.

    Pass a page's ``next_cursor`` as ``cursor`` for the messages before it
    (the same argument name as ``list_conversations``).

    Raises:
        InvalidIdentifier: malformed user id or conversation id.
        InvalidLimit: ``limit`` outside 1..MAX_HISTORY_PAGE (200).
        InvalidCursor: a cursor history did not produce, or made for another conversation.
        ConversationNotFound: missing, or another user's.
    """
    limit = check_limit(limit, MAX_HISTORY_PAGE)
    conversation = check_uuid(conversation_id, "conversation_id")
    params = {
        "p_user_id": check_user_id(user_id),
        "p_conversation_id": conversation,
        "p_before": _NO_CURSOR if cursor is None else decode_history_cursor(cursor, conversation),
        "p_limit": limit + 1,
    }

    def finish(rows: list[Row]) -> Page[Message]:
        if not rows:
            raise ConversationNotFound("conversation not found")
        if rows[0][1] is None:
            return Page([], None)
        more = len(rows) > limit
        items = (
            [message_from_row(row, 1) for row in rows[limit - 1 :: -1]]
            if more
            else [message_from_row(row, 1) for row in reversed(rows)]
        )
        next_cursor = encode_history_cursor(items[0].seq, conversation) if more else None
        return Page(items, next_cursor)

    return Plan(_history(), params, finish)


def _message(result: tuple[Message, bool]) -> Message:
    return result[0]


add_message = query_function(plan_add_message, _message)
get_history = query_function(plan_get_history)
