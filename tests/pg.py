"""A throw-away PostgreSQL for tests: the machine's own binaries, one server per test session.

PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user
(`ponderpg`, created when absent). Its data directory lives in a temporary folder; it listens
on 127.0.0.1 on a free port and is stopped at the end. Each test gets a database of its own
(`fresh_database`), so tests never see each other's rows.

`python -m tests.pg start DIR` / `python -m tests.pg stop DIR` do the same from a shell
(`mk/postgres.mk`, `.ci/run`): `start` prints the server's URL (also in DIR/url).

Where the binaries are: `PONDER_PG_BIN`, else `initdb` on PATH, else
`/usr/lib/postgresql/*/bin` (what `apt-get install postgresql` gives).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

USER = "ponderpg"
START_TIMEOUT = 60  # seconds for initdb or pg_ctl to finish


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL could be started here (the reason says why)."""


def binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    chosen = os.environ.get("PONDER_PG_BIN")
    if chosen:
        return Path(chosen)
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    raise PostgresUnavailable("no PostgreSQL binaries: install them (apt-get install -y "
                              "postgresql) or set PONDER_PG_BIN to the folder with initdb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    folder: Path
    port: int
    bin: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new empty database on this server; its URL. (On a thread of its own, so it can
        be called with or without an event loop running.)"""
        name = f"t_{uuid.uuid4().hex[:16]}"

        async def create() -> None:
            conn = await asyncpg.connect(self.url(), timeout=10)
            try:
                await conn.execute(f"CREATE DATABASE {name}", timeout=30)
            finally:
                await conn.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, create()).result(timeout=60)
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "-t", str(START_TIMEOUT), "stop"], check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _as_user(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", USER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT,
                                check=False, cwd="/")
        if check and result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(argv)} failed ({result.returncode}):\n"
                                      f"{result.stdout}{result.stderr}")
        return result


def _ensure_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false", USER],
                       check=True, capture_output=True, timeout=30)


def start(folder: Path | None = None) -> Server:
    """Start a server in `folder` (a new temporary one by default)."""
    pg_bin = binaries()
    folder = Path(folder or tempfile.mkdtemp(prefix="ponder-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = Server(folder, _free_port(), pg_bin)
    if os.geteuid() == 0:
        _ensure_user()
        entry = pwd.getpwnam(USER)
        os.chmod(folder, 0o755)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        # Its parents must let the server's user in (a temporary folder usually does).
    try:
        server._as_user([str(pg_bin / "initdb"), "-D", str(server.data), "-U", USER,
                         "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"])
        options = (f"-c listen_addresses=127.0.0.1 -c port={server.port} "
                   f"-c unix_socket_directories={folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server._as_user([str(pg_bin / "pg_ctl"), "-D", str(server.data), "-o", options,
                         "-l", str(folder / "server.log"), "-w", "-t", str(START_TIMEOUT),
                         "start"])
    except BaseException:
        server.stop()
        raise
    (folder / "url").write_text(server.url() + "\n")
    (folder / "port").write_text(f"{server.port}\n")
    return server


def attach(folder: Path) -> Server:
    """The server `start` left running in `folder`."""
    return Server(folder, int((folder / "port").read_text()), binaries())


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        sys.stderr.write("usage: python -m tests.pg start|stop DIR\n")
        return 2
    folder = Path(argv[1]).resolve()
    if argv[0] == "start":
        print(start(folder).url())
    elif (folder / "port").exists():
        attach(folder).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))



# --- pytest fixtures (imported by the test modules that use PostgreSQL) --------------------

@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """One server for the session. Where PostgreSQL is required (`PONDER_REQUIRE_PG=1`:
    `make test-pg`, CI) a server that cannot start fails the test; elsewhere it skips."""
    try:
        server = start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("PONDER_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required here and did not start: {exc}")
        pytest.skip(f"no PostgreSQL here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: Server) -> str:
    """A fresh database of its own for the test."""
    return pg_server.fresh_database()
