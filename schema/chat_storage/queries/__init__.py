"""The chat operations on your own connection: query functions and the plan layer.

Query functions take an ``AsyncConnection`` or ``AsyncSession`` first and
keyword-only arguments after it, run one statement, and never commit: whoever
opened the transaction ends it, so a host application can combine these with
its own writes. ``ChatStore`` runs the very same statements, one round trip each.

The plan layer underneath is public too, for a connection SQLAlchemy does not
manage (bring your own connection; the load tests' raw-asyncpg reference runs
it so)::

    plan = plan_get_history(user_id="user-1", conversation_id=conversation_id)
    sql, _ = plan.statement.compile()  # $n placeholders, compiled once per process
    page = plan.finish(await asyncpg_connection.fetch(sql, *plan.args()))

Planning validates every argument and raises ``InvalidInput`` before anything is
sent. ``Plan.run(fetch)`` also retries an append that lost a race for its
``message_id``, as the query functions and ``ChatStore`` do; errors from your
connection are your driver's, untranslated.
"""

from .base import Plan, Statement, execute
from .conversations import (
    archive_conversation,
    archive_inactive_batch,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_conversations,
    plan_archive_conversation,
    plan_archive_inactive_batch,
    plan_create_conversation,
    plan_delete_conversation,
    plan_get_conversation,
    plan_list_conversations,
    plan_restore_conversation,
    plan_set_status,
    restore_conversation,
)
from .messages import add_message, get_history, plan_add_message, plan_get_history

__all__ = [
    "Plan",
    "Statement",
    "add_message",
    "archive_conversation",
    "archive_inactive_batch",
    "create_conversation",
    "delete_conversation",
    "execute",
    "get_conversation",
    "get_history",
    "list_conversations",
    "plan_add_message",
    "plan_archive_conversation",
    "plan_archive_inactive_batch",
    "plan_create_conversation",
    "plan_delete_conversation",
    "plan_get_conversation",
    "plan_get_history",
    "plan_list_conversations",
    "plan_restore_conversation",
    "plan_set_status",
    "restore_conversation",
]
