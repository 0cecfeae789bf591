"""Checks of caller input, run before anything is sent to the database.

Every rule here mirrors one the database would enforce (or one it enforces
badly, such as a NUL byte failing deep inside the driver), so that a caller's
mistake costs no round trip, writes no row and gets a precise typed error.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from typing import Any, Final

from .errors import (
    ContentTooLong,
    InvalidContent,
    InvalidIdentifier,
    InvalidLimit,
    InvalidMetadata,
    InvalidRole,
)
from .models import MessageRole

__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_HISTORY_PAGE",
    "MAX_LIST_PAGE",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_USER_ID_CHARS",
    "MAX_USER_MESSAGE_CHARS",
]

#: The plan's CHECK constraint chk_user_message_length.
MAX_USER_MESSAGE_CHARS: Final = 1000
#: A cap on any message (assistant replies included), so one call cannot write megabytes.
MAX_CONTENT_CHARS: Final = 100_000
#: users.id is VARCHAR(255).
MAX_USER_ID_CHARS: Final = 255
#: Serialised size of a message's metadata object, in UTF-8 bytes.
MAX_METADATA_BYTES: Final = 16 * 1024
#: Nesting depth of metadata (the top-level object counts as 1).
MAX_METADATA_DEPTH: Final = 16
MAX_HISTORY_PAGE: Final = 200
MAX_LIST_PAGE: Final = 200


def _check_text(value: str, what: str, error: type[InvalidIdentifier | InvalidContent]) -> None:
    if "\x00" in value:
        raise error(f"{what} contains a NUL character, which PostgreSQL cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{what} contains a lone surrogate, which is not valid UTF-8") from None


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it can be a ``users.id`` value.

    Raises:
        InvalidIdentifier: not a non-empty string of at most 255 characters.
    """
    if not isinstance(user_id, str) or not user_id:
        raise InvalidIdentifier("user_id must be a non-empty string")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidIdentifier(f"user_id is longer than {MAX_USER_ID_CHARS} characters")
    _check_text(user_id, "user_id", InvalidIdentifier)
    return user_id


def check_uuid(value: object, what: str) -> uuid.UUID:
    """Return ``value`` as a UUID.

    Raises:
        InvalidIdentifier: not a UUID or a string holding one.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidIdentifier(f"{what} is not a valid UUID")


def check_role(role: object) -> MessageRole:
    """Return ``role`` as a MessageRole.

    Raises:
        InvalidRole: not one of the enum's members or values.
    """
    if isinstance(role, MessageRole):
        return role
    if isinstance(role, str):
        try:
            return MessageRole(role)
        except ValueError:
            pass
    allowed = ", ".join(r.value for r in MessageRole)
    raise InvalidRole(f"role must be one of: {allowed}")


def check_content(role: MessageRole, content: object) -> str:
    """Return ``content`` if the database would store it for ``role``.

    Raises:
        InvalidContent: not a string, empty or blank, or holding NUL or a lone surrogate.
        ContentTooLong: over 1000 characters for a user message, or over MAX_CONTENT_CHARS.
    """
    if not isinstance(content, str):
        raise InvalidContent("content must be a string")
    if not content.strip():
        raise InvalidContent("content is empty")
    length = len(content)  # code points, as PostgreSQL's length() counts them
    if role is MessageRole.USER and length > MAX_USER_MESSAGE_CHARS:
        raise ContentTooLong(
            f"user message is {length} characters; at most {MAX_USER_MESSAGE_CHARS} allowed"
        )
    if length > MAX_CONTENT_CHARS:
        raise ContentTooLong(f"message is {length} characters; at most {MAX_CONTENT_CHARS}")
    _check_text(content, "content", InvalidContent)
    return content


def _check_json_value(value: object, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidMetadata(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMetadata("metadata keys must be strings")
            _check_json_value(key, depth)
            _check_json_value(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_value(item, depth + 1)
    elif isinstance(value, str):
        # json.dumps escapes NUL as \u0000, which jsonb then refuses: catch it here.
        if "\x00" in value:
            raise InvalidMetadata("metadata contains a NUL character, which jsonb cannot store")
    elif value is not None and not isinstance(value, int | float | bool):
        raise InvalidMetadata(f"metadata holds a {type(value).__name__}, which is not JSON")


def encode_metadata(metadata: object) -> str | None:
    """Serialise metadata to the JSON text stored in ``messages.metadata``.

    Raises:
        InvalidMetadata: not a dict of JSON values, too deep, too large, or holding
            NaN/Infinity, an integer too long for JSON text, a NUL character or
            a lone surrogate (jsonb rejects them).
    """
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidMetadata("metadata must be a JSON object (a dict) or None")
    _check_json_value(metadata, 1)
    try:
        text = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        if _holds_non_finite(metadata):
            raise InvalidMetadata(
                "metadata holds NaN or Infinity, which JSON cannot carry"
            ) from exc
        # The other ValueError: an integer past sys.get_int_max_str_digits().
        raise InvalidMetadata(
            "metadata holds an integer too long to write as JSON text (over "
            f"{sys.get_int_max_str_digits()} digits); store it as a string"
        ) from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidMetadata("metadata contains a lone surrogate, not valid UTF-8") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadata(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    return text


def _holds_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(item) for item in value)
    return False


def check_limit(limit: object, maximum: int) -> int:
    """Return ``limit`` if it is a page size between 1 and ``maximum``.

    Raises:
        InvalidLimit: not an int in range (bools are refused too).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidLimit(f"limit must be an integer from 1 to {maximum}")
    return limit


def decode_metadata(value: Any) -> dict[str, Any] | None:
    """The metadata dict from a fetched column value (text when the codec is not set)."""
    if value is None or isinstance(value, dict):
        return value
    decoded = json.loads(value)
    return decoded if isinstance(decoded, dict) else None
