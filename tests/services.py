"""Run a command with the servers the test suite needs, starting throwaway ones when none answer.

    python -m tests.services [--postgres URL] [--redis URL] -- COMMAND...

For each service asked for: when a server answers at URL it is used as it is; otherwise one
is started from this machine's binaries (PostgreSQL's ``initdb`` and ``pg_ctl`` in a temporary
folder, ``redis-server`` with nothing on disk), on URL's port when it is free, and stopped when
COMMAND ends. COMMAND gets ``DATABASE_URL`` and ``CAPI_TEST_REDIS_URL`` pointing at what answered
(not ``CELERY_BROKER_URL``: Celery reads that one into every app, and the tests build apps
that must have no broker).
When neither is possible it stops with one line saying what to install: never a silent skip.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class ServiceError(Exception):
    """The service neither answers nor can be started here; the message says what to do."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.services", description=__doc__)
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL URL for DATABASE_URL")
    parser.add_argument("--redis", metavar="URL", help="Redis URL for CAPI_TEST_REDIS_URL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    env = dict(os.environ)
    try:
        with ExitStack() as stack:
            if args.redis:
                env["CAPI_TEST_REDIS_URL"] = stack.enter_context(redis_at(args.redis))
            if args.postgres:
                env["DATABASE_URL"] = stack.enter_context(postgres_at(args.postgres))
            return subprocess.call(command, env=env)
    except ServiceError as exc:
        print(f"tests.services: {exc}", file=sys.stderr)
        return 2


@contextmanager
def postgres_at(url: str) -> Iterator[str]:
    """``url`` when a PostgreSQL server answers there, else the URL of a throwaway one."""
    if _postgres_answers(url):
        yield url
        return
    bindir = _postgres_bindir()
    parts = urlsplit(url)
    port = _free_port(parts.port or 5432)
    with tempfile.TemporaryDirectory(prefix="capi-pg-") as folder:
        data = Path(folder, "data")
        run_as = _unprivileged_prefix(folder)
        initdb = ["-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
        _run([*run_as, f"{bindir}/initdb", *initdb])
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        log = f"{folder}/server.log"
        _run(
            [*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start"]
        )
        try:
            name = parts.path.lstrip("/") or "postgres"
            if name != "postgres":
                _create_database(port, name)
            netloc = f"{parts.username or 'postgres'}@127.0.0.1:{port}"
            started = urlunsplit((parts.scheme, netloc, f"/{name}", "", ""))
            print(f"tests.services: started a throwaway PostgreSQL at {started}", file=sys.stderr)
            yield started
        finally:
            _run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"])


@contextmanager
def redis_at(url: str) -> Iterator[str]:
    """``url`` when a Redis server answers there, else the URL of a throwaway one."""
    parts = urlsplit(url)
    if _redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            f"nothing answers at {_safe(url)} and redis-server is not installed: "
            "install Redis (Debian: apt-get install redis-server) or point REDIS_URL at one"
        )
    port = _free_port(parts.port or 6379)
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _redis_answers("127.0.0.1", port), "the throwaway Redis")
        started = urlunsplit((parts.scheme or "redis", f"127.0.0.1:{port}", parts.path, "", ""))
        print(f"tests.services: started a throwaway Redis at {started}", file=sys.stderr)
        yield started
    finally:
        process.terminate()
        process.wait(timeout=10)


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if "does not exist" in str(exc):
            raise ServiceError(
                f"PostgreSQL answers at {_safe(url)} but its database does not exist: create it"
            ) from None
        return False
    return True


def _create_database(port: int, name: str) -> None:
    import psycopg
    from psycopg import sql

    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _postgres_bindir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for folder in reversed(candidates):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return folder
    raise ServiceError(
        "no PostgreSQL answers at POSTGRES_URL and no initdb/pg_ctl was found to start one: "
        "install PostgreSQL's server binaries (Debian: apt-get install postgresql) or set "
        "POSTGRES_URL to a server that runs"
    )


def _version_key(folder: str) -> tuple[int, ...]:
    version = Path(folder).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _unprivileged_prefix(folder: str) -> list[str]:
    """PostgreSQL refuses to run as root: hand the folder to the ``postgres`` user then."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "PostgreSQL cannot run as root and there is no 'postgres' user to run it as: "
            "run the tests as another user or set POSTGRES_URL to a server that runs"
        ) from None
    os.chown(folder, user.pw_uid, user.pw_gid)
    runuser = shutil.which("runuser") or "runuser"
    return [runuser, "-u", "postgres", "--"]


def _redis_answers(host: str, port: int) -> bool:
    try:
        with closing(socket.create_connection((host, port), timeout=2)) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, else any free port."""
    for port in (preferred, 0):
        with closing(socket.socket()) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ServiceError("no free TCP port on 127.0.0.1")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        program = Path(next(part for part in command if "/" in part)).name
        raise ServiceError(f"{program} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def _wait_for(ready: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not start within {seconds:.0f} s")


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
