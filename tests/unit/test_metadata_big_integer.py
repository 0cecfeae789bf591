"""Metadata holding an integer too long for JSON text gets its own message."""

from __future__ import annotations

import pytest

from chat_storage import InvalidMetadata
from chat_storage.validation import encode_metadata


def test_big_integer_is_not_called_nan() -> None:
    """A 5,000-digit integer is refused as a too-long integer, not as NaN or Infinity."""
    with pytest.raises(InvalidMetadata, match="integer too long") as raised:
        encode_metadata({"n": 10**4999})
    assert "NaN" not in str(raised.value)


def test_nan_still_named() -> None:
    """A NaN nested in a list is still refused as NaN or Infinity."""
    with pytest.raises(InvalidMetadata, match="NaN or Infinity"):
        encode_metadata({"a": [1, {"b": float("nan")}]})
