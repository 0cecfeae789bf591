"""A stand-in for the existing application's schema (its users and tasks tables).

Our migrations must never create, alter or drop these; tests create them here,
the way the application's own migrations would, and check they stay untouched.
"""

from __future__ import annotations

import asyncpg

APP_DDL = """
CREATE TABLE users (
    id VARCHAR(255) PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE tasks (
    id SERIAL PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('phase2_0007');
INSERT INTO users (id, email) VALUES ('app-user-1', 'one@example.com'), ('app-user-2', 'two@example.com');
INSERT INTO tasks (user_id, title) VALUES ('app-user-1', 'write the plan'), ('app-user-2', 'review it');
"""


async def create_app_tables(url: str) -> None:
    """Create the application's tables and a few rows in the database at ``url``."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(APP_DDL)
    finally:
        await conn.close()
