"""What users install: the wheel's contents and migrations that match the models."""

import subprocess
import sys
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

import django_capi

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "django_capi" / "migrations"


@pytest.mark.slow
def test_the_wheel_carries_code_migrations_and_type_marker(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("django_capi-*.whl")
    assert wheel.name.startswith(f"django_capi-{django_capi.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "django_capi/__init__.py",
        "django_capi/py.typed",
        "django_capi/migrations/0001_initial.py",
        "django_capi/models.py",
    }
    # Templates and static files are not Python: only MANIFEST.in puts them in the wheel.
    expected |= {
        str(path.relative_to(ROOT))
        for pattern in ("templates/**/*.html", "static/**/*.css")
        for path in (ROOT / "django_capi").glob(pattern)
    }
    assert any(name.endswith("health.html") for name in expected)
    assert expected <= names
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)
    metadata = next(name for name in names if name.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Python: >=3.11" in text
    assert "Requires-Dist: django>=5.2" in text


@pytest.mark.django_db
def test_models_and_migrations_agree():
    call_command("makemigrations", "django_capi", "--check", "--dry-run", stdout=StringIO())


@pytest.mark.django_db
@override_settings(DEFAULT_AUTO_FIELD="django.db.models.AutoField")
def test_the_projects_default_auto_field_does_not_create_a_migration():
    call_command("makemigrations", "django_capi", "--check", "--dry-run", stdout=StringIO())


def test_no_two_migrations_share_a_number():
    numbers = [path.name[:4] for path in MIGRATIONS.glob("[0-9]*.py")]
    assert numbers
    assert len(numbers) == len(set(numbers))
