"""Starting django-capi in other processes, connected to this test run's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of this run's test database (PostgreSQL or MariaDB), for another process."""
    db = connection.settings_dict
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"{scheme}://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def environment(capi_settings: dict[str, Any] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CAPI_TEST_SETTINGS": json.dumps(capi_settings or {}),
        "PYTHONPATH": str(ROOT),
    }


def start(
    args: Sequence[str], capi_settings: dict[str, Any] | None = None, *, log: Path | None = None
) -> subprocess.Popen[str]:
    """Run ``python *args``; its output goes to ``log`` when given (readable while it runs),
    else to a pipe for ``communicate()``."""
    output = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment(capi_settings),
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def manage(*args: str) -> list[str]:
    return ["-m", "django", *args]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
