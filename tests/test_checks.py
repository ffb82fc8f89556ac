"""django-capi's system checks: each fires with its stable id and a fix, and stays silent when
the setup is right."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.db import connections
from django.db.models import Model
from django.test import override_settings
from django.utils import timezone

from django_capi import checks
from django_capi.conf import API_VERSIONS, capi_settings
from django_capi.exceptions import CapiConfigurationError
from django_capi.middleware import CapiMiddleware

CAPI = "django_capi.middleware.CapiMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
MESSAGES = "django.contrib.messages.middleware.MessageMiddleware"
GOOD_MIDDLEWARE = [SESSION, AUTH, MESSAGES, CAPI]
VALID = {"PIXEL_ID": "1234567890", "ACCESS_TOKEN": "test-token-not-real", "WAKE": "none"}
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
ROOT = Path(__file__).resolve().parent.parent
REDIS = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache"}}


def capi_ids(**settings: Any) -> list[str]:
    """The ids of the messages under ``settings``, as `manage.py check --tag django_capi` runs
    them (registered by the app's ready())."""
    with override_settings(**settings):
        return sorted(message.id or "" for message in run_checks(tags=[checks.TAG]))


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAPI_PIXEL_ID", "CAPI_ACCESS_TOKEN", "CAPI_TEST_EVENT_CODE"):
        monkeypatch.delenv(name, raising=False)


def test_the_test_settings_only_lack_the_middleware():
    # tests/settings.py has no CapiMiddleware on purpose; nothing else is wrong there.
    assert capi_ids() == ["django_capi.W001"]


def test_a_right_setup_is_silent():
    assert capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI=VALID) == []


def test_every_message_has_a_django_capi_id_and_a_fix():
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "TEST_EVENT_CODE": "T1", "WAKE": "none"}):
        messages = run_checks(tags=[checks.TAG])
    assert sorted(m.id or "" for m in messages) == [
        "django_capi.E002",
        "django_capi.W001",
        "django_capi.W003",
    ]
    assert all(message.hint for message in messages)


# --- settings ------------------------------------------------------------------------------


def test_a_missing_pixel_id_is_an_error_with_the_fix():
    with override_settings(DJANGO_CAPI={**VALID, "PIXEL_ID": None}):
        (message,) = checks.check_settings()
    assert message.id == "django_capi.E001"
    assert message.is_serious()
    assert "CAPI_PIXEL_ID" in message.hint


def test_a_missing_token_is_an_error_with_the_fix():
    settings = {k: v for k, v in VALID.items() if k != "ACCESS_TOKEN"}
    with override_settings(DJANGO_CAPI=settings):
        (message,) = checks.check_settings()
    assert message.id == "django_capi.E002"
    assert "CAPI_ACCESS_TOKEN" in message.hint


def test_the_token_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "from-the-environment")
    settings = {k: v for k, v in VALID.items() if k != "ACCESS_TOKEN"}
    assert capi_ids(DJANGO_CAPI=settings, MIDDLEWARE=GOOD_MIDDLEWARE) == []


def test_an_unknown_key_is_one_error_naming_it():
    assert capi_ids(DJANGO_CAPI={**VALID, "PIXELID": "1"}, MIDDLEWARE=GOOD_MIDDLEWARE) == [
        "django_capi.E003"
    ]
    with override_settings(DJANGO_CAPI={**VALID, "PIXELID": "1"}):
        (message,) = checks.check_settings()
    assert "'PIXELID'" in message.msg
    assert message.is_serious()


def test_an_invalid_value_is_the_settings_message_without_the_token():
    with override_settings(DJANGO_CAPI={**VALID, "ACCESS_TOKEN": 12345, "WAKE": "celery"}):
        with pytest.raises(CapiConfigurationError) as raised:
            checks.capi_settings()
        messages = [m for m in run_checks(tags=[checks.TAG]) if m.id != "django_capi.W001"]
    assert [m.id for m in messages] == ["django_capi.E003"]  # nothing else judged on bad settings
    assert messages[0].msg == str(raised.value)
    assert "12345" not in messages[0].msg


def test_the_lease_rule_is_left_to_the_settings_validation():
    ids = capi_ids(DJANGO_CAPI={**VALID, "LEASE_SECONDS": 5}, MIDDLEWARE=GOOD_MIDDLEWARE)
    assert ids == ["django_capi.E003"]


def test_a_test_event_code_in_production_is_a_warning():
    assert capi_ids(
        DJANGO_CAPI={**VALID, "TEST_EVENT_CODE": "TEST123"}, MIDDLEWARE=GOOD_MIDDLEWARE
    ) == ["django_capi.W003"]
    with override_settings(DJANGO_CAPI={**VALID, "TEST_EVENT_CODE": "TEST123"}):
        (message,) = checks.check_settings()
    assert not message.is_serious()
    assert "capi_test_event" in message.hint


def test_a_test_event_code_while_debugging_is_fine():
    settings = {"DJANGO_CAPI": {**VALID, "TEST_EVENT_CODE": "TEST123"}, "DEBUG": True}
    assert capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, **settings) == []


# --- middleware ------------------------------------------------------------------------------


def test_tags_without_the_middleware_are_a_warning_with_the_fix():
    with override_settings(MIDDLEWARE=[SESSION, AUTH]):
        (message,) = checks.check_middleware()
    assert message.id == "django_capi.W001"
    assert CAPI in message.hint


def test_without_django_templates_the_tags_cannot_be_used():
    assert capi_ids(MIDDLEWARE=[SESSION, AUTH], TEMPLATES=[], DJANGO_CAPI=VALID) == []


class SubclassedCapiMiddleware(CapiMiddleware):
    """An integrator's own subclass counts as the middleware."""


def test_a_subclass_of_the_middleware_counts():
    middleware = [SESSION, AUTH, f"{__name__}.SubclassedCapiMiddleware"]
    assert capi_ids(MIDDLEWARE=middleware, DJANGO_CAPI=VALID) == []


@pytest.mark.parametrize(
    ("middleware", "late"),
    [
        ([CAPI, SESSION, AUTH], "SessionMiddleware and AuthenticationMiddleware"),
        ([SESSION, CAPI, AUTH], "AuthenticationMiddleware"),
    ],
)
def test_the_middleware_before_session_or_auth_is_a_warning(middleware, late):
    with override_settings(MIDDLEWARE=middleware):
        (message,) = checks.check_middleware()
    assert message.id == "django_capi.W002"
    assert f"before {late}" in message.msg
    assert f"after {late}" in message.hint


def test_the_middleware_without_sessions_is_fine():
    assert capi_ids(MIDDLEWARE=[CAPI], DJANGO_CAPI=VALID) == []


# --- Celery ----------------------------------------------------------------------------------


@pytest.fixture
def vendor(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make every outbox database look like ``vendor`` (the suite also runs on PostgreSQL)."""

    def set_vendor(name: str) -> None:
        for alias in connections:
            monkeypatch.setattr(connections[alias], "vendor", name)

    return set_vendor


def test_sqlite_with_celery_workers_is_a_warning(vendor):
    vendor("sqlite")
    with override_settings(DJANGO_CAPI={**VALID, "WAKE": "celery"}, CACHES=REDIS):
        (message,) = checks.check_celery()
    assert message.id == "django_capi.W004"
    assert "default, other" in message.msg
    assert "PostgreSQL" in message.hint


def test_sqlite_without_celery_is_fine(vendor):
    vendor("sqlite")
    assert capi_ids(DJANGO_CAPI=VALID, MIDDLEWARE=GOOD_MIDDLEWARE, CACHES=LOCMEM) == []


def test_postgresql_with_celery_and_a_shared_cache_is_fine(vendor):
    vendor("postgresql")
    settings = {"DJANGO_CAPI": {**VALID, "WAKE": "celery"}, "CACHES": REDIS}
    assert capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, **settings) == []


@pytest.mark.parametrize("backend", ["locmem.LocMemCache", "dummy.DummyCache"])
def test_celery_with_a_per_process_cache_is_a_warning(vendor, backend):
    vendor("postgresql")
    caches = {"default": {"BACKEND": f"django.core.cache.backends.{backend}"}}
    with override_settings(DJANGO_CAPI={**VALID, "WAKE": "celery"}, CACHES=caches):
        (message,) = checks.check_celery()
    assert message.id == "django_capi.W005"
    assert "Running delivery" in message.hint


# --- databases -------------------------------------------------------------------------------


class OutboxOnlyOn:
    """A router that migrates django_capi on one alias only and leaves writes alone."""

    def __init__(self, alias: str, outbox_writes: str | None = None) -> None:
        self.alias = alias
        self.outbox_writes = outbox_writes

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        if model._meta.app_label == "django_capi":
            return self.outbox_writes
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return db == self.alias if app_label == "django_capi" else None


def test_a_model_written_where_there_is_no_outbox_is_an_error():
    with override_settings(DATABASE_ROUTERS=[OutboxOnlyOn("other", outbox_writes="other")]):
        messages = checks.check_databases()
    assert {(m.id, m.obj._meta.label) for m in messages} == {
        ("django_capi.E004", "shop.Lead"),
        ("django_capi.E004", "shop.Order"),
    }
    assert "'default'" in messages[0].msg
    assert "allow_migrate" in messages[0].hint


def test_send_event_routed_where_there_is_no_outbox_is_an_error():
    with override_settings(DATABASE_ROUTERS=[OutboxOnlyOn("default", outbox_writes="other")]):
        (message,) = checks.check_databases()
    assert message.id == "django_capi.E005"


def test_an_outbox_on_the_models_database_is_fine():
    with override_settings(DATABASE_ROUTERS=[OutboxOnlyOn("default")]):
        assert checks.check_databases() == []


# --- model events ------------------------------------------------------------------------------


def test_an_app_or_messaging_event_without_its_required_hook_is_an_error(isolated_registry):
    from django_capi import ModelEvent, register
    from tests.shop.models import Order

    @register(Order)
    class AppInstall(ModelEvent[Order]):
        event_name = "AppInstall"
        action_source = "app"

    @register(Order)
    class ChatLead(ModelEvent[Order]):
        event_name = "LeadSubmitted"
        action_source = "business_messaging"

    @register(Order)
    class ChatPurchase(ModelEvent[Order]):
        event_name = "Purchase2"
        action_source = "business_messaging"

        def messaging_channel(self, instance: Order) -> str:
            return "whatsapp"

    messages = checks.check_model_events()
    assert sorted((m.id, m.obj.__name__) for m in messages) == [
        ("django_capi.E006", "AppInstall"),
        ("django_capi.E006", "ChatLead"),
    ]
    assert "no app_data() hook" in next(m.msg for m in messages if m.obj is AppInstall)
    assert all("Beyond the website" in (m.hint or "") for m in messages)


def test_the_registered_shop_events_need_no_extra_hook():
    assert checks.check_model_events() == []


# --- API version -----------------------------------------------------------------------------


def test_the_default_api_version_is_the_newest_meta_lists():
    # meta-capi.md §1.4 [GCL]: v26.0 is the newest, with no end announced.
    assert next(iter(API_VERSIONS)) == "v26.0"
    with override_settings(DJANGO_CAPI=VALID):
        assert capi_settings().api_version == "v26.0"


@pytest.mark.parametrize(("days_left", "warned"), [(-1, True), (0, True), (90, True), (91, False)])
def test_an_api_version_meta_stops_serving_is_a_warning(monkeypatch, days_left, warned):
    monkeypatch.setitem(API_VERSIONS, "v21.0", timezone.now().date() + timedelta(days=days_left))
    ids = capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI={**VALID, "API_VERSION": "v21.0"})
    assert ids == (["django_capi.W006"] if warned else [])


def test_a_version_older_than_the_table_has_ended_and_a_newer_one_is_fine():
    with override_settings(
        MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI={**VALID, "API_VERSION": "v9.0"}
    ):
        (message,) = run_checks(tags=[checks.TAG])
    assert message.id == "django_capi.W006"
    assert "has not been served since" in message.msg
    assert 'API_VERSION"] to v26.0' in message.hint
    assert capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI={**VALID, "API_VERSION": "v27.0"}) == []


# --- a broker without its Celery app -----------------------------------------------------------


@pytest.fixture
def unloaded_celery_app() -> Any:
    """A process where the project's __init__.py did not import its Celery app: the current
    app is one nobody configured."""
    from celery import Celery, current_app

    previous = current_app._get_current_object()
    Celery("default", set_as_current=True)
    yield
    previous.set_current()


def test_a_broker_without_a_loaded_celery_app_is_a_warning(unloaded_celery_app):
    without_wake = {key: value for key, value in VALID.items() if key != "WAKE"}
    with override_settings(
        MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI=without_wake, CELERY_BROKER_URL="redis://x:6379/0"
    ):
        assert capi_settings().wake == "none"
        (message,) = run_checks(tags=[checks.TAG])
    assert message.id == "django_capi.W007"
    assert "from .celery import app as celery_app" in (message.hint or "")


def test_a_loaded_app_or_an_explicit_wake_is_fine(unloaded_celery_app):
    without_wake = {key: value for key, value in VALID.items() if key != "WAKE"}
    broker = {"MIDDLEWARE": GOOD_MIDDLEWARE, "CELERY_BROKER_URL": "redis://x:6379/0"}
    assert capi_ids(**broker, DJANGO_CAPI=VALID) == []  # WAKE "none" chosen on purpose
    no_broker = {"CELERY_BROKER_URL": None}
    assert capi_ids(MIDDLEWARE=GOOD_MIDDLEWARE, DJANGO_CAPI=without_wake, **no_broker) == []
    from tests.celery_app import app  # importing it makes it the current app, as in a project

    app.set_current()
    assert "django_capi.W007" not in capi_ids(**broker, DJANGO_CAPI=without_wake)


PROJECT_SETTINGS = """
SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = [*{apps!r}, "django_capi"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
MIDDLEWARE = ["django_capi.middleware.CapiMiddleware"]
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}}]
USE_TZ = True
DJANGO_CAPI = {valid!r}
"""


def manage_check(tmp_path: Any, apps: list[str]) -> subprocess.CompletedProcess[str]:
    """`manage.py check` in a project whose INSTALLED_APPS are ``apps`` and django_capi."""
    (tmp_path / "project_settings.py").write_text(PROJECT_SETTINGS.format(apps=apps, valid=VALID))
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAPI_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings=project_settings"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "apps",
    [
        ["django.contrib.contenttypes"],  # no auth, admin, sessions nor messages
        ["django.contrib.contenttypes", "django.contrib.sessions"],
    ],
)
def test_check_runs_without_auth_admin_or_sessions(tmp_path, apps):
    result = manage_check(tmp_path, apps)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "django_capi.E" not in result.stdout + result.stderr


def test_check_says_contenttypes_is_missing_instead_of_crashing(tmp_path):
    result = manage_check(tmp_path, [])
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    assert "django_capi.E007" in output
    assert 'Add "django.contrib.contenttypes" to INSTALLED_APPS' in output


@pytest.mark.parametrize(
    "collation, exact",
    [
        ("utf8mb4_nopad_bin", True),  # MariaDB
        ("utf8mb3_nopad_bin", True),
        ("utf8mb4_0900_bin", True),  # MySQL 8
        ("utf8mb4_bin", False),  # PAD SPACE: "x" and "x " are one key
        ("utf8mb4_general_ci", False),
        ("utf8mb4_unicode_ci", False),
        ("utf8mb4_0900_ai_ci", False),
        (None, False),
    ],
)
def test_only_binary_no_pad_collations_are_exact(collation, exact):
    assert checks.is_exact_collation(collation) is exact


@pytest.mark.django_db
def test_key_collations_are_checked_only_on_the_databases_asked_for():
    # Django's own database checks do the same: `check` without --database queries nothing.
    assert checks.check_key_collations(databases=None) == []
    assert checks.check_key_collations(databases=["default"]) == []
