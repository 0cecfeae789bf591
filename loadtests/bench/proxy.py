"""A loopback TCP proxy that delays every chunk by a fixed time per direction,
in its own process so that its work does not count as the client's CPU.

Each chunk is stamped when read and written when its delay is up, so the delay
is a latency, not a throughput limit: chunks in flight overlap, as on a wire.
asyncio's timers fire on millisecond epoll timeouts, so the real delay is a
little longer than asked; the network benchmark measures it (calibration)
rather than assuming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

READY_TIMEOUT = 15.0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()


async def _serve(host: str, port: int, delay: float, ready: Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(Exception):
            await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    ready.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def serve(host: str, port: int, delay: float, ready: Connection) -> None:
    """Child process entry point: forward 127.0.0.1:<ephemeral> to host:port."""
    asyncio.run(_serve(host, port, delay, ready))


@contextlib.contextmanager
def delay_proxy(host: str, port: int, delay: float) -> Iterator[int]:
    """A proxy process for the block; yields its local port."""
    ctx: Any = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=serve, args=(host, port, delay, sender), daemon=True)
    process.start()
    try:
        if not receiver.poll(READY_TIMEOUT):
            raise RuntimeError("the delay proxy did not start")
        yield int(receiver.recv())
    finally:
        process.terminate()
        process.join(5)
