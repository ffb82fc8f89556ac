"""``tests/services.py``: `make test` needs no server running beforehand."""

import os
import socket
import subprocess
import sys
from contextlib import closing

import pytest

from tests import services


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with closing(socket.socket()) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_a_throwaway_postgresql_and_redis_serve_the_command_and_are_stopped_after() -> None:
    pg_port, redis_port = free_port(), free_port()
    check = (
        "import os, psycopg, redis;"
        "assert psycopg.connect(os.environ['DATABASE_URL']).execute('select 1').fetchone() == (1,);"
        "assert redis.Redis.from_url(os.environ['CAPI_TEST_REDIS_URL']).ping();"
        # Celery would read it into every app, the ones tests build without a broker too.
        "assert 'CELERY_BROKER_URL' not in os.environ;"
        "print(os.environ['DATABASE_URL'], os.environ['CAPI_TEST_REDIS_URL'])"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.services",
            "--postgres",
            f"postgres://postgres@127.0.0.1:{pg_port}/capi_services_check",
            "--redis",
            f"redis://127.0.0.1:{redis_port}/3",
            "--",
            sys.executable,
            "-c",
            check,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        f"postgres://postgres@127.0.0.1:{pg_port}/capi_services_check",
        f"redis://127.0.0.1:{redis_port}/3",
    ]
    assert "started a throwaway PostgreSQL" in result.stderr
    assert not listening(pg_port)
    assert not listening(redis_port)


def test_the_command_fails_with_its_exit_status() -> None:
    assert services.main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_without_binaries_one_line_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(services.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    url = f"postgres://postgres@127.0.0.1:{free_port()}/test"
    assert services.main(["--postgres", url, "--", sys.executable, "-c", "pass"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no PostgreSQL answers" in line
    assert "apt-get install postgresql" in line


def test_without_redis_server_one_line_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    assert services.main(["--redis", url, "--", sys.executable, "-c", "pass"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "apt-get install redis-server" in line
    assert "secret" not in line
