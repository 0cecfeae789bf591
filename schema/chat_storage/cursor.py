"""Opaque keyset-pagination cursors.

A cursor is the position after the last item of a page, base64url-encoded with a
version and the kind of listing it belongs to, so a history cursor is refused by
the conversation listing and any tampered cursor is a clear InvalidCursor rather
than a database error. Cursors carry no secret and need none: every query still
filters by the owner, so a forged cursor can only move within the caller's own data.
"""

from __future__ import annotations

import base64
import binascii
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


def encode_history_cursor(seq: int) -> str:
    """Cursor for history: messages strictly older than sequence number ``seq``."""
    return _encode(f"1:h:{seq}")


def decode_history_cursor(cursor: object) -> int:
    """The sequence number a history cursor points before.

    Raises:
        InvalidCursor: malformed, or not a history cursor.
    """
    parts = _decode(cursor, "h")
    if len(parts) != 1 or not parts[0].isdigit():
        raise InvalidCursor("history cursor is malformed")
    seq = int(parts[0])
    if not 0 < seq < 2**63:
        raise InvalidCursor("history cursor is out of range")
    return seq


def encode_list_cursor(updated_at: datetime, conversation_id: uuid.UUID) -> str:
    """Cursor for conversation listings: strictly after ``(updated_at, id)`` descending."""
    micros = (updated_at - _EPOCH) // timedelta(microseconds=1)
    return _encode(f"1:c:{micros}:{conversation_id.hex}")


def decode_list_cursor(cursor: object) -> tuple[datetime, uuid.UUID]:
    """The ``(updated_at, id)`` position a listing cursor points after.

    Raises:
        InvalidCursor: malformed, or not a listing cursor.
    """
    parts = _decode(cursor, "c")
    try:
        micros, hex_id = parts
        moment = _EPOCH + timedelta(microseconds=int(micros))
        return moment, uuid.UUID(hex=hex_id)
    except (ValueError, OverflowError):
        raise InvalidCursor("conversation cursor is malformed") from None
