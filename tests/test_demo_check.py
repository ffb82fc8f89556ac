"""`make demo-check` in the suite: the example shop's whole stack (web server, Celery worker and
beat, Graph API emulator) driven by Chromium through a fault window."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.demo
@pytest.mark.browser
def test_every_conversion_of_the_demo_arrives_exactly_once_with_its_pixel_twin():
    # The script makes its own SQLite database and broker; the suite's must not leak in.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CAPI_", "CELERY_")) and key != "DATABASE_URL"
    }
    result = subprocess.run(
        [sys.executable, "example_project/demo_check.py", "--shoppers", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "OK: every conversion arrived exactly once, with its Pixel twin." in result.stdout
    assert "3 orders, 2 leads" in result.stdout
    assert "0 received more than once, 0 missing, 0 not from the outbox" in result.stdout
    assert "Fault window" in result.stdout and " 0 request(s) refused" not in result.stdout
