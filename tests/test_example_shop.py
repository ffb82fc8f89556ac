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


def shop_settings(tmp_path, **variables):
    script = (
        "import django; django.setup()\n"
        "from django_capi.conf import capi_settings\n"
        "conf = capi_settings()\n"
        "print(conf.graph_api_url, conf.pixel_id, conf.test_event_code)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAPI_")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "SHOP_VAR_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT / "example_project"),
        **variables,
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow
def test_the_shop_talks_to_meta_only_with_a_pixel_a_token_and_a_test_event_code(tmp_path):
    meta = {"CAPI_PIXEL_ID": "42", "CAPI_ACCESS_TOKEN": "t0k3n", "CAPI_TEST_EVENT_CODE": "TEST1"}
    assert shop_settings(tmp_path, **meta) == ["https://graph.facebook.com", "42", "TEST1"]
    without_code = {k: v for k, v in meta.items() if k != "CAPI_TEST_EVENT_CODE"}
    assert shop_settings(tmp_path, **without_code) == [
        "http://127.0.0.1:8111",
        "1234567890123456",
        "None",
    ]
