"""Input rules and cursors, checked without a server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from chat_storage import (
    MAX_METADATA_BYTES,
    ContentTooLong,
    InvalidContent,
    InvalidCursor,
    InvalidIdentifier,
    InvalidLimit,
    InvalidMetadata,
    InvalidRole,
    MessageRole,
)
from chat_storage.cursor import (
    decode_history_cursor,
    decode_list_cursor,
    encode_history_cursor,
    encode_list_cursor,
)
from chat_storage.validation import (
    check_content,
    check_limit,
    check_role,
    check_user_id,
    check_uuid,
    encode_metadata,
)


def test_user_message_limit_is_the_plans() -> None:
    """1000 characters pass for a user message, 1001 do not; assistants may go longer."""
    assert check_content(MessageRole.USER, "x" * 1000)
    with pytest.raises(ContentTooLong, match="1001"):
        check_content(MessageRole.USER, "x" * 1001)
    assert check_content(MessageRole.ASSISTANT, "x" * 5000)


def test_length_counts_characters_not_bytes() -> None:
    """Multi-byte characters count once each, as PostgreSQL's length() does."""
    assert check_content(MessageRole.USER, "é" * 1000)


@pytest.mark.parametrize("content", ["", "   ", "a\x00b", "\ud800"])
def test_unstorable_content(content: str) -> None:
    """Empty, blank, NUL and lone-surrogate content are refused."""
    with pytest.raises(InvalidContent):
        check_content(MessageRole.ASSISTANT, content)


@pytest.mark.parametrize("role", ["system", "", "USER", None, 3])
def test_roles_outside_the_enum(role: object) -> None:
    """Only 'user' and 'assistant' are roles."""
    with pytest.raises(InvalidRole):
        check_role(role)


def test_role_values_and_members() -> None:
    """Roles are accepted as enum members or their string values."""
    assert check_role("assistant") is MessageRole.ASSISTANT
    assert check_role(MessageRole.USER) is MessageRole.USER


@pytest.mark.parametrize(
    "metadata",
    [
        [1, 2],
        "text",
        {1: "int key"},
        {"nan": float("nan")},
        {"nul": "a\x00"},
        {"surrogate": "\udfff"},
        {"obj": object()},
        {"big": "x" * (MAX_METADATA_BYTES + 1)},
    ],
)
def test_metadata_that_is_not_a_small_json_object(metadata: object) -> None:
    """Metadata must be a JSON object jsonb can store, within the size cap."""
    with pytest.raises(InvalidMetadata):
        encode_metadata(metadata)


def test_deeply_nested_metadata() -> None:
    """Nesting beyond the documented depth is refused before serialising."""
    nested: dict[str, object] = {}
    node = nested
    for _ in range(100):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(InvalidMetadata, match="nested"):
        encode_metadata(nested)


@pytest.mark.parametrize("limit", [0, -1, 201, 10**9, True, 2.5, "10"])
def test_limits_outside_range(limit: object) -> None:
    """Page sizes must be integers from 1 to the maximum."""
    with pytest.raises(InvalidLimit):
        check_limit(limit, 200)


@pytest.mark.parametrize("user_id", ["", "x" * 256, "a\x00", None, 42])
def test_malformed_user_ids(user_id: object) -> None:
    """User ids are non-empty strings of at most 255 storable characters."""
    with pytest.raises(InvalidIdentifier):
        check_user_id(user_id)


@pytest.mark.parametrize("value", ["not-a-uuid", "", "1' OR '1'='1", 12, "0" * 100])
def test_malformed_uuids(value: object) -> None:
    """Conversation and message ids must be UUIDs."""
    with pytest.raises(InvalidIdentifier):
        check_uuid(value, "conversation_id")


def test_cursors_round_trip() -> None:
    """Cursors decode to the position they were made from."""
    assert decode_history_cursor(encode_history_cursor(42)) == 42
    moment = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    conversation_id = uuid.uuid4()
    assert decode_list_cursor(encode_list_cursor(moment, conversation_id)) == (
        moment,
        conversation_id,
    )


@pytest.mark.parametrize("cursor", ["", "!!!", "bm9wZQ", "x" * 500, 5])
def test_malformed_cursors(cursor: object) -> None:
    """Garbage cursors are InvalidCursor, not database errors."""
    with pytest.raises(InvalidCursor):
        decode_history_cursor(cursor)
    with pytest.raises(InvalidCursor):
        decode_list_cursor(cursor)


def test_cursor_of_the_other_listing() -> None:
    """A history cursor is refused by the conversation listing and vice versa."""
    with pytest.raises(InvalidCursor):
        decode_list_cursor(encode_history_cursor(5))
    with pytest.raises(InvalidCursor):
        decode_history_cursor(encode_list_cursor(datetime.now(UTC), uuid.uuid4()))
