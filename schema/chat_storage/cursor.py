"""Opaque keyset-pagination cursors.

A cursor is the position after the last item of a page, base64url-encoded with a
version and the kind of listing it belongs to, so a history cursor is refused by
the conversation listing and any tampered cursor is a clear InvalidCursor rather
than a database error. Cursors carry no secret and need none: every query still
filters by the owner, so a forged cursor can only move within the caller's own data.

A cursor is also bound to the listing it was made for: a history cursor to its
conversation, a listing cursor to its user and status, as a short digest (never
the ids themselves). Passing one to another conversation or listing is a client
bug that would otherwise page silently through the wrong data: InvalidCursor.
Cursors made before the binding existed (no digest) are still accepted, so a
client paging across an upgrade is not cut off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Generic, TypeVar

from .errors import InvalidCursor

__all__ = ["Page"]

T = TypeVar("T")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_CURSOR_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next, None on the last."""

    items: list[T]
    next_cursor: str | None


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")


def _scope_tag(*parts: str | bytes) -> str:
    """The digest that binds a cursor to the listing it was made for."""
    digest = hashlib.blake2b(digest_size=6, person=b"chat-cursor")
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


def _check_scope(tag: str | None, expected: str | None, what: str) -> None:
    # No tag: a cursor from before cursors were bound (see the module docstring).
    if tag is not None and expected is not None and tag != expected:
        raise InvalidCursor(f"cursor was made for another {what}")


def _decode(cursor: object, kind: str) -> list[str]:
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor must be a non-empty string returned by this package")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not one this package produced") from None
    parts = raw.split(":")
    if len(parts) < 2 or parts[0] != "1" or parts[1] != kind:
        raise InvalidCursor("cursor is not one this package produced for this listing")
    return parts[2:]


def _history_scope(conversation_id: uuid.UUID | None) -> str | None:
    return None if conversation_id is None else _scope_tag(conversation_id.bytes)


def _list_scope(user_id: str | None, status: str | None) -> str | None:
    return None if user_id is None or status is None else _scope_tag(user_id, status)


def encode_history_cursor(seq: int, conversation_id: uuid.UUID | None = None) -> str:
    """Cursor for history: messages strictly older than sequence number ``seq``,
    bound to ``conversation_id`` when given."""
    scope = _history_scope(conversation_id)
    return _encode(f"1:h:{seq}" if scope is None else f"1:h:{seq}:{scope}")


def decode_history_cursor(cursor: object, conversation_id: uuid.UUID | None = None) -> int:
    """The sequence number a history cursor points before.

    Args:
        cursor: a ``next_cursor`` of a history page.
        conversation_id: the conversation being paged; a cursor bound to
            another one is refused.

    Raises:
        InvalidCursor: malformed, not a history cursor, or made for another conversation.
    """
    parts = _decode(cursor, "h")
    if not 1 <= len(parts) <= 2 or not parts[0].isdigit():
        raise InvalidCursor("history cursor is malformed")
    _check_scope(
        parts[1] if len(parts) == 2 else None, _history_scope(conversation_id), "conversation"
    )
    seq = int(parts[0])
    if not 0 < seq < 2**63:
        raise InvalidCursor("history cursor is out of range")
    return seq


def encode_list_cursor(
    updated_at: datetime,
    conversation_id: uuid.UUID,
    user_id: str | None = None,
    status: str | None = None,
) -> str:
    """Cursor for conversation listings: strictly after ``(updated_at, id)`` descending,
    bound to the listing of ``user_id`` and ``status`` when both are given."""
    micros = (updated_at - _EPOCH) // timedelta(microseconds=1)
    scope = _list_scope(user_id, status)
    raw = f"1:c:{micros}:{conversation_id.hex}"
    return _encode(raw if scope is None else f"{raw}:{scope}")


def decode_list_cursor(
    cursor: object, user_id: str | None = None, status: str | None = None
) -> tuple[datetime, uuid.UUID]:
    """The ``(updated_at, id)`` position a listing cursor points after.

    Args:
        cursor: a ``next_cursor`` of a listing page.
        user_id: the user whose listing is paged; with ``status``, a cursor
            bound to another listing is refused.
        status: the status being listed.

    Raises:
        InvalidCursor: malformed, not a listing cursor, or made for another listing.
    """
    parts = _decode(cursor, "c")
    if len(parts) == 3:
        _check_scope(parts.pop(), _list_scope(user_id, status), "user or status")
    try:
        micros, hex_id = parts
        moment = _EPOCH + timedelta(microseconds=int(micros))
        return moment, uuid.UUID(hex=hex_id)
    except (ValueError, OverflowError):
        raise InvalidCursor("conversation cursor is malformed") from None
