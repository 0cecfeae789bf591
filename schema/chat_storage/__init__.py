"""Storage for an AI chatbot's conversations on PostgreSQL.

Two tables, ``conversations`` and ``messages``, beside an existing application's
``users``; a :class:`ChatStore` that runs each chat operation in one round trip;
the same operations as plain query functions for a caller's own transaction
(:mod:`chat_storage.queries`); Prometheus metrics and OpenTelemetry spans.

Importing this package creates no engine, reads no settings and registers no
metric: the caller builds them.
"""

from .cursor import Page
from .engine import create_engine, create_unpooled_engine
from .errors import (
    ChatStoreError,
    ContentTooLong,
    ConversationArchived,
    ConversationNotFound,
    DatabaseError,
    DatabaseUnavailable,
    IdempotencyConflict,
    IntegrityViolation,
    InvalidContent,
    InvalidCursor,
    InvalidIdentifier,
    InvalidInput,
    InvalidLimit,
    InvalidMetadata,
    InvalidRole,
    NotFound,
    OperationTimeout,
    PoolTimeout,
    QueryTimeout,
    SerializationFailure,
    TransientError,
    UserNotFound,
)
from .host import ConversationDict, MessageDict
from .metrics import LATENCY_BUCKETS, StoreMetrics, observe_pool
from .models import Base, Conversation, ConversationStatus, Message, MessageRole
from .settings import Settings
from .store import ChatStore
from .tracing import StatementTracing, get_tracer, instrument_statements
from .validation import (
    MAX_CONTENT_CHARS,
    MAX_HISTORY_PAGE,
    MAX_LIST_PAGE,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_USER_MESSAGE_CHARS,
)

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_CONTENT_CHARS",
    "MAX_HISTORY_PAGE",
    "MAX_LIST_PAGE",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_USER_MESSAGE_CHARS",
    "Base",
    "ChatStore",
    "ChatStoreError",
    "ContentTooLong",
    "Conversation",
    "ConversationArchived",
    "ConversationDict",
    "ConversationNotFound",
    "ConversationStatus",
    "DatabaseError",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "IntegrityViolation",
    "InvalidContent",
    "InvalidCursor",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidLimit",
    "InvalidMetadata",
    "InvalidRole",
    "Message",
    "MessageDict",
    "MessageRole",
    "NotFound",
    "OperationTimeout",
    "Page",
    "PoolTimeout",
    "QueryTimeout",
    "SerializationFailure",
    "Settings",
    "StatementTracing",
    "StoreMetrics",
    "TransientError",
    "UserNotFound",
    "create_engine",
    "create_unpooled_engine",
    "get_tracer",
    "instrument_statements",
    "observe_pool",
]
