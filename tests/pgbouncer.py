"""Debian's PgBouncer in transaction mode on loopback, in front of the test server.

Transaction mode is what Neon's ``-pooler`` endpoint runs: each transaction may
go to a different server connection, so session state (prepared statements
included) cannot be relied on between transactions.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pgbouncer(database_url: str) -> Iterator[str]:
    """Start PgBouncer for the server of ``database_url``; yield the URL through it.

    Raises:
        RuntimeError: no pgbouncer binary (install Debian's ``pgbouncer``), or it did not start.
    """
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer not found: apt-get install pgbouncer (.ci/run does)")
    url = make_url(database_url)
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="chat-pgbouncer-"))
    config = workdir / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = host={url.host or "127.0.0.1"} port={url.port or 5432} user={url.username or "postgres"}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    user = None
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        os.chown(config, nobody.pw_uid, nobody.pw_gid)
        user = nobody.pw_uid
    process = subprocess.Popen(
        [binary, str(config)], user=user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {process.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start within 10 s") from None
                time.sleep(0.05)
        yield url.set(host="127.0.0.1", port=port, query={"sslmode": "disable"}).render_as_string(
            hide_password=False
        )
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
