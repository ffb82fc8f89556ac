"""The README's examples are the code the tests run."""

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_block_starting_with(first_line: str) -> str:
    for block in re.findall(r"^```[^\n]*\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no code block starting with {first_line!r}")


def test_the_quickstart_capi_module_is_the_example_shops():
    block = code_block_starting_with("# shop/capi.py")
    assert block == (ROOT / "example_project" / "shop" / "capi.py").read_text()


def test_the_normalization_example_prints_what_the_readme_says():
    block = code_block_starting_with(">>> from django_capi import normalize_user_data")
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    result = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE).run(test)
    assert result.failed == 0
    assert result.attempted == 2


@pytest.mark.slow
def test_the_example_shop_records_a_purchase_at_checkout(tmp_path):
    script = """
import django
django.setup()
from django.core.management import call_command
from django.test import Client
from django_capi import OutboxEvent
call_command("migrate", verbosity=0)
response = Client(HTTP_USER_AGENT="Mozilla/5.0 Demo").post(
    "/", {"email": "Demo.Shopper@Example.com", "phone": "(650) 555-1212", "total": "19.90"}
)
assert response.status_code == 302, response.status_code
row = OutboxEvent.objects.get()
print(row.status, row.event_name, row.payload["custom_data"], row.payload["user_data"]["ph"])
detail = Client().get(response["Location"])
assert row.event_id in detail.content.decode()
"""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "example_project",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 2)[:2] == ["pending", "Purchase"]
    assert "{'value': 19.9, 'currency': 'EUR'}" in result.stdout
    assert result.stdout.strip().endswith(
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    )


@pytest.mark.slow
def test_the_readme_testing_example_passes_in_the_example_shop(tmp_path):
    block = code_block_starting_with("# shop/tests/test_capi.py")
    test_file = tmp_path / "test_capi.py"
    test_file.write_text(block)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": "sqlite:///:memory:",
        "PYTHONPATH": str(ROOT / "example_project"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
