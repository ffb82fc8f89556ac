"""The example shop's own tests (example_project/shop/tests), run with its settings: its app
is also called ``shop``, like the test shop of this suite, so it needs a process of its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_example_shops_tests_pass(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAPI_")}
    database_url = os.environ.get("DATABASE_URL", "sqlite:///:memory:")
    if not database_url.startswith("sqlite"):
        # Its own test database, beside the one this session uses.
        database_url = database_url.rstrip("/") + "_example_shop"
    env |= {
        "DATABASE_URL": database_url,
        "SHOP_VAR_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "example_project"), str(ROOT)]),
    }
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ds=example_project.settings",
            "example_project/shop/tests",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
