"""A loopback TCP proxy that reads the PostgreSQL wire protocol as it passes.

It counts what the client sends after startup: a round trip is one Sync ('S')
or simple Query ('Q') message, since the client then waits for ReadyForQuery;
Parse ('P') messages count statements prepared, Execute ('E') statements run.
Counting messages, not time, makes "one round trip per operation" a
deterministic test. An optional delay per direction simulates network distance.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from dataclasses import dataclass, field

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass
class WireCounts:
    """Client message types seen since the last reset."""

    messages: Counter[str] = field(default_factory=Counter)

    @property
    def round_trips(self) -> int:
        return self.messages["S"] + self.messages["Q"]

    def reset(self) -> None:
        self.messages.clear()


class CountingProxy:
    """Forwards 127.0.0.1:<port> to a PostgreSQL server and counts client messages."""

    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.counts = WireCounts()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        tasks = [
            asyncio.create_task(self._client_to_server(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        writer.write(data)
        await writer.drain()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._send(writer, data)

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Startup: untyped messages (SSLRequest/GSSENCRequest answered by the server, then
        # StartupMessage); everything after is typed: 1 byte type, 4 byte length.
        while True:
            header = await reader.readexactly(8)
            length, code = struct.unpack("!ii", header)
            body = await reader.readexactly(length - 8)
            await self._send(writer, header + body)
            if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                break
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while len(buffer) >= 5:
                (length,) = struct.unpack("!i", buffer[1:5])
                if len(buffer) < length + 1:
                    break
                self.counts.messages[chr(buffer[0])] += 1
                buffer = buffer[length + 1 :]
            await self._send(writer, data)
