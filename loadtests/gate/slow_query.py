"""Injected regression for the gate's proof: ChatStore's history read slower on the server.

Not part of the library or the harness. ``python -m loadtests gate prove`` copies
this file as ``sitecustomize.py`` into a temporary directory on the load run's
PYTHONPATH, so every Python process of that run (the harness, Locust) imports
it at start-up and patches ``ChatStore``: its history statement is wrapped so
the server sleeps ``GATE_SLOW_QUERY_MS`` before answering. The patch sits on
``ChatStore._execute(plan)`` (every operation's statement passes there), so it
does not depend on how the store checks out connections. The raw asyncpg
reference is untouched, exactly as if a change to ChatStore's history query had
made it that much slower on the server.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chat_storage.queries.base import Plan


def install(delay_ms: float) -> None:
    """Patch ChatStore so its history read waits ``delay_ms`` on the server."""
    from chat_storage.queries.base import Statement
    from chat_storage.queries.messages import plan_get_history
    from chat_storage.store import ChatStore  # already imported when called from the hook

    history = plan_get_history(
        user_id="u", conversation_id="00000000-0000-0000-0000-000000000000"
    ).statement
    sql, names = history.compile()
    # pg_sleep runs once per statement inside the server; q.* keeps the columns
    # (and their order) that the plan's finish() reads by position.
    slow = Statement(history.name, history.collection, history.clause)
    slow._sql = (
        f"SELECT q.* FROM (SELECT pg_sleep({delay_ms / 1000:.6f})) AS injected_delay, "
        f"LATERAL ({sql}) AS q"
    )
    slow._names = names
    original = ChatStore._execute

    # The parameter's name is _execute's: mypy checks the replacement's signature.
    async def slower(
        self: ChatStore,
        plan: Plan[Any],
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        if plan.statement is history:
            plan = dataclasses.replace(plan, statement=slow)
        return await original(self, plan, timeout)

    ChatStore._execute = slower  # type: ignore[method-assign]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls install() right after chat_storage.store is imported, not before.

    Importing chat_storage here, at interpreter start-up, would import ssl and socket
    users before Locust's gevent monkey-patching; waiting for the first import
    of chat_storage.store leaves the process's import order as it was.
    """

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "chat_storage.store":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        delay_ms = self.delay_ms

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                install(delay_ms)

        spec.loader = Loader()
        return spec


_delay = os.environ.get("GATE_SLOW_QUERY_MS")
if _delay:
    sys.meta_path.insert(0, _AfterImport(float(_delay)))
