"""What users install: the wheel's contents and migrations that match the models."""

import re
import subprocess
import sys
import tarfile
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


@pytest.mark.slow
def test_the_sdist_ships_the_package_and_changelog_and_no_partial_test_suite(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (sdist,) = tmp_path.glob("django_capi-*.tar.gz")
    top = f"django_capi-{django_capi.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(top) for name in archive.getnames()}
    assert {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml"} <= names
    package = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "django_capi").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert package <= names
    # The suite needs the repository around it (settings, example project, services): a
    # piece of it would not run, so none of it is shipped.
    assert not [name for name in names if name.startswith(("tests", "example_project", "bench"))]


def test_the_changelog_keeps_a_changelog_and_covers_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "[Keep a Changelog](https://keepachangelog.com/" in text
    sections = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert sections[0] == "Unreleased"
    assert django_capi.__version__ in text
    for heading in re.findall(r"^### (.+)$", text, flags=re.MULTILINE):
        assert heading in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_readme_starts_with_try_it_and_installs_from_source():
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert sections[0] == "Try it"
    try_it = readme.split("## Try it\n", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in try_it
    assert "make test" in try_it
    assert "pip install ./django-capi" in try_it
    # Not on a package index yet: no instruction may install it from one.
    assert not re.search(r"pip install \"?django-capi", readme)


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
