"""One asyncio event loop per Locust process, driven from gevent greenlets.

Locust runs on gevent (``monkey.patch_all()`` at import); ``chat_storage`` is asyncio.
The loop runs in a real OS thread, started with the thread primitive gevent
saved before patching, and polls with the original epoll selector (the patched
``selectors`` module would hand the loop gevent's cooperative selector, which
only works inside the hub's thread). Greenlets submit coroutines with
``asyncio.run_coroutine_threadsafe`` and wait on a gevent ``Waiter`` woken by a
thread-safe async watcher (``hub.loop.async_()``) that the coroutine signals
when done: the hub keeps running while hundreds of greenlets wait at once.

Host names: asyncio resolves them with ``loop.run_in_executor(None,
socket.getaddrinfo)``; both the default executor's ``threading.Thread`` and
``socket.getaddrinfo`` are gevent-patched, and a patched thread started from the
loop thread is a greenlet in a thread whose hub never runs: the connect would
hang forever. :class:`_Loop` therefore resolves with the original, blocking
``getaddrinfo`` (once per new connection). The harness also rewrites
``localhost`` to ``127.0.0.1`` (see cli.py), which skips resolution entirely
and avoids ``::1`` being tried first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import gevent
import gevent.hub
import gevent.monkey

T = TypeVar("T")

_original_start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_OriginalEpollSelector = gevent.monkey.get_original("selectors", "EpollSelector")
_original_getaddrinfo = gevent.monkey.get_original("socket", "getaddrinfo")
_original_lock = gevent.monkey.get_original("_thread", "allocate_lock")


class _Loop(asyncio.SelectorEventLoop):
    """A selector loop on the real epoll that resolves names without an executor."""

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        return list(_original_getaddrinfo(host, port, family, type, proto, flags))


class AsyncioBridge:
    """An event loop in its own OS thread; ``call`` runs a coroutine from a greenlet."""

    def __init__(self) -> None:
        self._lock = _original_lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub_loop: Any = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use)."""
        with self._lock:
            if self._loop is None:
                # Created here, in the hub's thread, so the hub captured is the
                # one whose greenlets wait; run_forever moves to the new thread.
                loop = _Loop(_OriginalEpollSelector())
                self._hub_loop = gevent.get_hub().loop
                _original_start_new_thread(self._run, (loop,))
                self._loop = loop
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def call(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` on the loop; block this greenlet (not the hub) for its result."""
        loop = self.loop
        # A thread-safe async watcher per call: the loop thread's send() wakes the
        # hub, which resumes this greenlet. While it is active the hub knows work
        # is pending (no LoopExit when nothing else is scheduled).
        watcher = self._hub_loop.async_()
        waiter: gevent.hub.Waiter = gevent.hub.Waiter()
        outcome: list[Any] = []
        # A real lock: a greenlet killed while waiting (Locust stopping users)
        # closes the watcher, and the loop thread must not send() on a closed one.
        guard = _original_lock()
        abandoned = False

        async def runner() -> None:
            # The coroutine hands its own outcome over, so no greenlet touches the
            # concurrent.futures.Future (whose lock is gevent-patched) while the
            # loop thread completes it.
            try:
                outcome.append((True, await factory()))
            except BaseException as exc:
                outcome.append((False, exc))
                if not isinstance(exc, Exception):
                    raise
            finally:
                with guard:
                    if not abandoned:
                        watcher.send()

        watcher.start(waiter.switch, None)
        try:
            asyncio.run_coroutine_threadsafe(runner(), loop)
            waiter.get()
        finally:
            with guard:
                abandoned = True
                watcher.close()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def timed(
        self, factory: Callable[[], Awaitable[T]]
    ) -> tuple[T | None, float, Exception | None]:
        """Run ``factory()`` on the loop; the result, milliseconds and exception.

        The clock is read inside the coroutine, around the await only: the
        hand-offs between the hub and the loop thread are not counted.
        """

        async def measured() -> tuple[T | None, float, Exception | None]:
            started = time.perf_counter()
            try:
                value = await factory()
            except Exception as exc:
                return None, (time.perf_counter() - started) * 1000.0, exc
            return value, (time.perf_counter() - started) * 1000.0, None

        return self.call(measured)

    def stop(self) -> None:
        """Stop the loop (pending work is abandoned); used at process exit."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
