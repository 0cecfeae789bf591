"""The host's FastAPI application: its own engine and sessions, chat_storage inside.

Routes return ``to_dict()`` under the return annotations ``ConversationDict`` /
``MessageDict``, which FastAPI uses as response models (docs/host-application.md).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession
from typing_extensions import TypedDict

from chat_storage import ConversationDict, Message, MessageDict, MessageRole, NotFound
from chat_storage.queries import create_conversation, get_history


class HistoryPage(TypedDict):
    """One page of history as JSON."""

    items: list[MessageDict]
    next_cursor: str | None


class NewMessage(BaseModel):
    """The body of a new message."""

    content: str
    role: MessageRole = MessageRole.USER
    metadata: dict[str, Any] | None = None


async def open_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, from the application's own engine."""
    async with request.app.state.sessions() as session:
        yield session


# Module level: FastAPI resolves the string annotations against this module.
Session = Annotated[AsyncSession, Depends(open_session)]


def create_app(database_url: str) -> FastAPI:
    """The application on ``database_url`` (a postgresql+asyncpg:// URL)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        app.state.sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.post("/users/{user_id}/conversations", status_code=201)
    async def start_conversation(user_id: str, session: Session) -> ConversationDict:
        conversation = await create_conversation(session, user_id=user_id)
        await session.commit()
        return conversation.to_dict()

    @app.post("/users/{user_id}/conversations/{conversation_id}/messages", status_code=201)
    async def post_message(
        user_id: str, conversation_id: uuid.UUID, body: NewMessage, session: Session
    ) -> MessageDict:
        # Pattern 3 through the ORM: seq and the conversation's bump come at flush.
        message = Message(
            conversation_id=conversation_id,
            user_id=user_id,
            role=body.role,
            content=body.content,
            metadata_=body.metadata,
        )
        session.add(message)
        await session.commit()
        return message.to_dict()

    @app.get("/users/{user_id}/conversations/{conversation_id}/messages")
    async def read_history(
        user_id: str, conversation_id: uuid.UUID, session: Session, cursor: str | None = None
    ) -> HistoryPage:
        page = await get_history(
            session, user_id=user_id, conversation_id=conversation_id, cursor=cursor
        )
        return {"items": [m.to_dict() for m in page.items], "next_cursor": page.next_cursor}

    return app
