"""The typed errors every public operation raises.

The whole tree::

    ChatStoreError
    ├── InvalidInput                 caller mistakes, caught before anything is sent
    │   ├── InvalidIdentifier        malformed user id or UUID
    │   ├── InvalidContent           empty content or a character PostgreSQL rejects
    │   ├── ContentTooLong           longer than the role allows
    │   ├── InvalidRole              not a MessageRole
    │   ├── InvalidMetadata          not a small JSON object
    │   ├── InvalidLimit             page size outside 1..max
    │   └── InvalidCursor            not a cursor this package produced for this listing
    ├── NotFound
    │   ├── ConversationNotFound     missing, or owned by another user (indistinguishable)
    │   └── UserNotFound             the user id is not in the application's users table
    ├── ConversationArchived         appending to an archived conversation
    ├── IdempotencyConflict          message_id already used for another conversation or message
    ├── IntegrityViolation           any other constraint the database enforced
    ├── TransientError               retrying the same call may succeed (retryable = True)
    │   ├── DatabaseUnavailable      connection lost, server restarting, too many connections
    │   ├── PoolTimeout              no pooled connection within pool_timeout
    │   ├── QueryTimeout             the server's statement_timeout cancelled the query
    │   ├── OperationTimeout         the operation's deadline (operation_timeout) passed
    │   └── SerializationFailure     deadlock or serialization failure
    └── DatabaseError                anything else the database reported

Database errors are translated in one place, :func:`translate_errors`, by SQLSTATE
(never by message text), and re-raised ``from`` the driver's exception. Messages
name the problem but never carry message content, metadata, user ids or passwords.
A connection that could not be made (refused, unknown host, TLS refused, login
rejected) names the server's host:port and the driver's reason.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "ChatStoreError",
    "ContentTooLong",
    "ConversationArchived",
    "ConversationNotFound",
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
    "NotFound",
    "OperationTimeout",
    "PoolTimeout",
    "QueryTimeout",
    "SerializationFailure",
    "TransientError",
    "UserNotFound",
    "translate_errors",
]


class ChatStoreError(Exception):
    """Base class of every error this package raises."""

    retryable: ClassVar[bool] = False
    #: The SQLSTATE the database reported, when the error came from the database.
    sqlstate: str | None = None


class InvalidInput(ChatStoreError, ValueError):
    """Raised when an argument is rejected before anything is sent to the database."""


class InvalidIdentifier(InvalidInput):
    """Raised when a user id or a UUID argument is malformed."""


class InvalidContent(InvalidInput):
    """Raised when message content is empty or holds a character PostgreSQL cannot store."""


class ContentTooLong(InvalidInput):
    """Raised when message content is longer than its role allows."""


class InvalidRole(InvalidInput):
    """Raised when a role is not one of MessageRole's values."""


class InvalidMetadata(InvalidInput):
    """Raised when metadata is not a JSON object within the documented size and depth."""


class InvalidLimit(InvalidInput):
    """Raised when a page size is outside 1..the operation's maximum."""


class InvalidCursor(InvalidInput):
    """Raised when a cursor is malformed or belongs to another kind of listing."""


class NotFound(ChatStoreError, LookupError):
    """Raised when the thing asked for does not exist for this user."""


class ConversationNotFound(NotFound):
    """Raised when a conversation does not exist or belongs to another user."""


class UserNotFound(NotFound):
    """Raised when the user id is not present in the application's users table."""


class ConversationArchived(ChatStoreError):
    """Raised when a message is appended to an archived conversation."""


class IdempotencyConflict(ChatStoreError):
    """Raised when a message_id is reused for a different conversation, user or message."""


class IntegrityViolation(ChatStoreError):
    """Raised when the database rejects a write for a constraint not covered above."""


class TransientError(ChatStoreError):
    """Raised when the same call may succeed if retried (pass message_id to retry appends)."""

    retryable: ClassVar[bool] = True


class DatabaseUnavailable(TransientError):
    """Raised when the connection was lost or the server refused or is restarting."""


class PoolTimeout(TransientError):
    """Raised when no pooled connection became free within the pool timeout."""


class QueryTimeout(TransientError):
    """Raised when the server cancelled a statement (statement_timeout or a cancel request)."""


class OperationTimeout(TransientError):
    """Raised when an operation's deadline passed; its statement was cancelled on the server."""


class SerializationFailure(TransientError):
    """Raised on a deadlock or a serialization failure."""


class DatabaseError(ChatStoreError):
    """Raised for any other error the database reported."""


# Constraint names come from the migrations; they identify which rule a write broke.
_FK_ERRORS: dict[str, type[ChatStoreError]] = {
    "conversations_user_id_fkey": UserNotFound,
    "messages_user_id_fkey": UserNotFound,
    "messages_conversation_id_fkey": ConversationNotFound,
}
_CHECK_ERRORS: dict[str, type[ChatStoreError]] = {
    "chk_user_message_length": ContentTooLong,
    "messages_role_check": InvalidRole,
}
_UNIQUE_ERRORS: dict[str, type[ChatStoreError]] = {
    "messages_pkey": IdempotencyConflict,
}
_TRANSIENT_SQLSTATES: dict[str, type[ChatStoreError]] = {
    "57014": QueryTimeout,  # query_canceled
    "57P01": DatabaseUnavailable,  # admin_shutdown (restart, pg_terminate_backend)
    "57P02": DatabaseUnavailable,  # crash_shutdown
    "57P03": DatabaseUnavailable,  # cannot_connect_now (starting up)
    "53300": DatabaseUnavailable,  # too_many_connections
    "40001": SerializationFailure,
    "40P01": SerializationFailure,
    "25P03": QueryTimeout,  # idle_in_transaction_session_timeout
}


def _driver_error(exc: BaseException) -> BaseException:
    """The asyncpg exception behind a SQLAlchemy wrapper (or ``exc`` itself)."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        exc = orig
    # SQLAlchemy's asyncpg adapter wraps the asyncpg error once more.
    cause = exc.__cause__
    if cause is not None and getattr(cause, "sqlstate", None) is not None:
        return cause
    return exc


# SQLSTATE classes a server reports while a connection is being made: 08
# connection exception, 28 invalid authorization (bad password, unknown role),
# 3D invalid catalog name (no such database).
_CONNECT_SQLSTATE_CLASSES: tuple[str, ...] = ("08", "28", "3D")


def error_for(exc: BaseException, *, url: URL | str | None = None) -> ChatStoreError | None:
    """The public error for a driver or SQLAlchemy exception, or None if it is not one.

    Args:
        exc: what the driver or SQLAlchemy raised.
        url: the database the failed call was connecting to, if known: a
            connection failure's message then names its host:port (never the
            password) beside the driver's reason.
    """
    # Imported here: keeps `import chat_storage` free of the driver and SQLAlchemy's exc
    # module for code paths that never touch a database.
    import asyncpg
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.TimeoutError):
        return PoolTimeout("no database connection became free within the pool timeout")
    driver = _driver_error(exc)
    sqlstate = getattr(driver, "sqlstate", None)
    constraint = getattr(driver, "constraint_name", None)
    error: ChatStoreError
    if isinstance(sqlstate, str):
        cls: type[ChatStoreError] | None
        if sqlstate == "23503":
            cls = _FK_ERRORS.get(constraint or "", IntegrityViolation)
        elif sqlstate == "23514":
            cls = _CHECK_ERRORS.get(constraint or "", IntegrityViolation)
        elif sqlstate == "23505":
            cls = _UNIQUE_ERRORS.get(constraint or "", IntegrityViolation)
        elif sqlstate.startswith("23"):
            cls = IntegrityViolation
        elif sqlstate.startswith("08"):
            cls = DatabaseUnavailable
        elif sqlstate in ("22021", "22P05"):  # NUL / untranslatable character
            cls = InvalidContent
        else:
            cls = _TRANSIENT_SQLSTATES.get(sqlstate, DatabaseError)
        if url is not None and sqlstate.startswith(_CONNECT_SQLSTATE_CLASSES):
            # The server's own words (a role or database name, never a password).
            reason = getattr(driver, "message", None) or type(driver).__name__
            error = cls(_connect_failure(url, f"{reason} (SQLSTATE {sqlstate})"))
        else:
            where = f" on {constraint}" if constraint else ""
            error = cls(f"the database rejected the operation (SQLSTATE {sqlstate}{where})")
        error.sqlstate = sqlstate
        return error
    if isinstance(
        driver,
        asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.ConnectionDoesNotExistError
        | ConnectionError
        | OSError,
    ) or isinstance(exc, sa_exc.DisconnectionError):
        if url is not None and isinstance(driver, OSError):
            # Raised while connecting: the socket, the name lookup, TLS or the
            # connect timeout. (A connection lost later is an asyncpg error.)
            return DatabaseUnavailable(_connect_failure(url, _os_reason(driver, url)))
        return DatabaseUnavailable(f"the database connection failed ({type(driver).__name__})")
    if isinstance(exc, sa_exc.DBAPIError):
        return DatabaseError(f"the database driver failed ({type(driver).__name__})")
    return None


def _connect_failure(url: URL | str, reason: str) -> str:
    """``could not connect to the database at host:port: reason``, password-free."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    message = f"could not connect to the database at {_host_port(parsed)}: {reason}"
    password = parsed.password
    if password and str(password) in message:
        message = message.replace(str(password), "***")
    return message


def _host_port(url: URL) -> str:
    host = url.host
    if not host:
        # libpq's ?host=... (a socket directory or several hosts), else its default.
        query_host = url.query.get("host")
        host = (query_host if isinstance(query_host, str) else ",".join(query_host or ())) or (
            "localhost"
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{url.port or 5432}"


def _os_reason(exc: OSError, url: URL | str) -> str:
    """The driver's reason for a failed connect, in the words libpq users know."""
    from sqlalchemy.engine import make_url

    if isinstance(exc, socket.gaierror):
        host = make_url(url).host or "localhost"
        return f"could not resolve host {host!r} ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out (connect_timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running and accepting TCP connections?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if exc.errno is not None and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


@contextmanager
def translate_errors(*, url: URL | str | None = None) -> Iterator[None]:
    """Re-raise driver and SQLAlchemy errors as the most specific ChatStoreError.

    Args:
        url: the database being used, if known: connection failures then name
            its host:port (never the password).

    Raises:
        ChatStoreError: the translated error, chained ``from`` the original.
    """
    try:
        yield
    except ChatStoreError:
        raise
    except Exception as exc:
        error = error_for(exc, url=url)
        if error is None:
            raise
        raise error from exc
