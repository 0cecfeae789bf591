"""FastAPI responses carry the public fields as JSON: ``metadata``, string ids, ISO times."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime

import pytest
from starlette.exceptions import StarletteDeprecationWarning

# Starlette asks for httpx2 under its TestClient; the dev group installs httpx,
# which works. Only this import is excused from -W error.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from tests.host_app.app import create_app
from tests.host_app.conftest import async_url
from tests.host_app.models import User

MESSAGE_KEYS = {"id", "conversation_id", "user_id", "role", "content", "metadata", "created_at"}
CONVERSATION_KEYS = {"id", "user_id", "status", "created_at", "updated_at"}


@pytest.fixture
def client(host_database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(async_url(host_database_url))) as client:
        yield client


def assert_iso_utc(value: str) -> None:
    assert datetime.fromisoformat(value).utcoffset() is not None


def test_conversation_response_is_public_json(client: TestClient, host_user: User) -> None:
    """A new conversation: exactly the public keys, a string UUID and ISO timestamps."""
    response = client.post(f"/users/{host_user.id}/conversations")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == CONVERSATION_KEYS
    assert uuid.UUID(body["id"])
    assert (body["user_id"], body["status"]) == (host_user.id, "active")
    assert_iso_utc(body["created_at"])
    assert_iso_utc(body["updated_at"])


def test_message_response_is_public_json(client: TestClient, host_user: User) -> None:
    """A posted message: metadata under its own name, no seq, string UUIDs, ISO time."""
    conversation = client.post(f"/users/{host_user.id}/conversations").json()
    response = client.post(
        f"/users/{host_user.id}/conversations/{conversation['id']}/messages",
        json={"content": "hello", "metadata": {"client": "web"}},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == MESSAGE_KEYS
    assert body["metadata"] == {"client": "web"}
    assert body["conversation_id"] == conversation["id"]
    assert uuid.UUID(body["id"])
    assert (body["role"], body["content"]) == ("user", "hello")
    assert_iso_utc(body["created_at"])


def test_history_response_lists_public_messages(client: TestClient, host_user: User) -> None:
    """History: items in order, each with the public keys only."""
    conversation = client.post(f"/users/{host_user.id}/conversations").json()
    path = f"/users/{host_user.id}/conversations/{conversation['id']}/messages"
    client.post(path, json={"content": "question"})
    client.post(path, json={"content": "answer", "role": "assistant"})
    body = client.get(path).json()
    assert body["next_cursor"] is None
    assert [m["content"] for m in body["items"]] == ["question", "answer"]
    assert all(set(m) == MESSAGE_KEYS for m in body["items"])


def test_another_users_conversation_is_404(client: TestClient, host_user: User) -> None:
    """Posting as a user who does not own the conversation: the typed error, mapped to 404."""
    conversation = client.post(f"/users/{host_user.id}/conversations").json()
    response = client.post(
        f"/users/nobody/conversations/{conversation['id']}/messages", json={"content": "hi"}
    )
    assert response.status_code == 404
