"""Two drainer processes sharing one SQLite database file: the compare-and-set claim."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from tests.processes import ROOT, wait_until

pytestmark = pytest.mark.slow

SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.factories import OutboxEventFactory
OutboxEventFactory.bulk_create(3000)
"""

COUNT = """
import django
django.setup()
from django_capi.models import OutboxEvent
print(OutboxEvent.objects.filter(status="delivered").count())
"""


def test_two_drainers_on_one_sqlite_file_send_each_event_once(capi_graph, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CAPI_TEST_SETTINGS": f'{{"GRAPH_API_URL": "{capi_graph.url}", "BATCH_SIZE": 100}}',
        "PYTHONPATH": str(ROOT),
    }

    def python(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    python(SETUP)
    drainers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "capi_drain",
                "--loop",
                "--interval",
                "0.2",
                "--database",
                "default",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        wait_until(lambda: len(capi_graph.event_ids()) >= 3000, timeout=120, what="delivery")
        wait_until(lambda: python(COUNT).strip() == "3000", timeout=30, what="write-backs")
    finally:
        for drainer in drainers:
            drainer.send_signal(signal.SIGTERM)
    outputs = [drainer.communicate(timeout=30)[0] for drainer in drainers]
    assert [drainer.returncode for drainer in drainers] == [0, 0], outputs
    assert "database is locked" not in "".join(outputs)
    counts = Counter(capi_graph.event_ids())
    assert len(counts) == 3000
    assert max(counts.values()) == 1
