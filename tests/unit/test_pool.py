"""FairQueue: checkouts are served in arrival order, no item is ever lost, and
surplus items are kept until the queue has been full for its grace period."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty, Full

from chat_storage import pool as pool_module
from chat_storage.pool import FairAsyncQueuePool, FairQueue


async def get(queue: FairQueue[str], max_wait: float | None = None) -> str:
    # QueuePool calls get() from inside SQLAlchemy's greenlet bridge.
    return await greenlet_spawn(queue.get, True, max_wait)


async def test_returned_item_goes_to_the_oldest_waiter_not_to_a_barging_caller() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    served: list[str] = []

    async def waiter(name: str) -> None:
        served.append(name + ":" + await get(queue))

    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)  # both are now waiting, in this order
    assert queue.waiting() == 2

    queue.put_nowait("conn")
    # A caller arriving now, before the woken waiter runs, must not take it.
    with pytest.raises(Empty):
        queue.get_nowait()
    barger = asyncio.create_task(waiter("barger"))
    await first
    queue.put_nowait("conn")
    await second
    queue.put_nowait("conn")
    await barger
    assert served == ["first:conn", "second:conn", "barger:conn"]


async def test_timeout_raises_empty_and_leaves_no_waiter_behind() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    with pytest.raises(Empty):
        await get(queue, max_wait=0.01)
    assert queue.waiting() == 0
    queue.put_nowait("conn")  # not handed to the expired waiter
    assert queue.get_nowait() == "conn"


async def test_item_handed_to_a_cancelled_caller_is_passed_on() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    doomed = asyncio.create_task(get(queue))
    await asyncio.sleep(0)
    queue.put_nowait("conn")  # handed over, but the caller is cancelled before it runs
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert queue.get_nowait() == "conn"


async def test_lifo_and_capacity_follow_the_queue_protocol() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2, use_lifo=True)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert queue.full() and queue.qsize() == 2
    with pytest.raises(Full):
        queue.put_nowait("c")
    assert queue.get(block=False) == "b"
    assert queue.get_nowait() == "a"
    assert queue.empty()


class FakeClock:
    """Stands in for ``time`` in chat_storage.pool: monotonic() returns ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(pool_module, "time", fake)
    return fake


def test_surplus_is_kept_until_the_queue_was_full_for_the_grace(clock: FakeClock) -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    queue.keep_surplus_for = 30.0
    queue.put_nowait("a")
    queue.put_nowait("b")  # full from now on
    clock.now += 29.9
    queue.put_nowait("c")  # a surplus item, kept: the grace has not passed
    assert queue.qsize() == 3 and not queue.full()
    clock.now += 0.1
    assert queue.full()
    with pytest.raises(Full):  # QueuePool closes the overflow connection on Full
        queue.put_nowait("d")
    # Taking items down to maxsize does not end the full period: no caller
    # needed more than the surplus.
    assert queue.get_nowait() == "a"
    assert queue.full()


def test_dropping_below_maxsize_restarts_the_grace(clock: FakeClock) -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    queue.keep_surplus_for = 30.0
    for item in "abc":
        queue.put_nowait(item)
    clock.now += 20.0
    queue.get_nowait()
    queue.get_nowait()  # one left: callers needed the surplus and more
    clock.now += 20.0
    queue.put_nowait("d")  # full again from now
    queue.put_nowait("e")
    assert queue.qsize() == 3 and not queue.full()
    clock.now += 30.0
    assert queue.full()


def test_no_grace_refuses_at_maxsize_as_queue_pool_does(clock: FakeClock) -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    queue.put_nowait("a")
    assert queue.full()
    with pytest.raises(Full):
        queue.put_nowait("b")


def test_negative_overflow_idle_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="overflow_idle_timeout"):
        FairAsyncQueuePool(lambda: None, overflow_idle_timeout=-1.0, pool_size=1)
