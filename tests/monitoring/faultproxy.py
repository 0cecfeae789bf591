"""A loopback TCP proxy in front of PostgreSQL that can take the database away.

While :meth:`FaultProxy.cut` holds, every open connection is closed and new
ones are refused (the listening socket is closed), as when the server is down;
afterwards the same port listens again. Everything runs on threads, so the
proxy lives beside subprocesses (the harness, the exporter) and the test's
own event loops.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target`` until told to cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Listen on a free loopback port (kept for later restarts)."""
        self._listen()

    def stop(self) -> None:
        """Stop listening and close every forwarded connection."""
        self._closed = True
        self._drop_everything()

    @contextlib.contextmanager
    def cut(self) -> Iterator[None]:
        """The database is unreachable inside this block: open connections are
        reset and new ones refused; it comes back, on the same port, after."""
        self._drop_everything()
        try:
            yield
        finally:
            if not self._closed:
                self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Connections still in TIME_WAIT from the cut can hold the port briefly.
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _drop_everything(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by a cut or stop
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # a cut began meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            # Each socket is the source of exactly one pump: that pump closes it.
            with self._lock:
                self._sockets.discard(source)
            source.close()
