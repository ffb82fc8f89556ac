"""``capi_doctor`` and ``capi_test_event`` against the Graph API emulator."""

from __future__ import annotations

import re
import socket
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from django_capi.management.commands import capi_doctor
from django_capi.management.commands.capi_fakegraph import describe_request
from django_capi.models import Installation
from django_capi.testing import GraphError, HttpStatus

ALL_DATABASES = ["default", "other"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_capi.middleware.CapiMiddleware",
]
MARKS = ("✓", "✗", "!", "·")


def doctor(*args: str) -> tuple[str, CommandError | None]:
    """The doctor's output, and the CommandError (exit status 1) it ended with, if any."""
    out = StringIO()
    try:
        call_command("capi_doctor", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def marked(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith(MARKS)]


@pytest.fixture
def healthy(settings, capi_graph):
    settings.MIDDLEWARE = MIDDLEWARE
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "none"}
    return capi_graph


# --- capi_doctor ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_healthy_setup_is_all_ticks_and_exits_0(healthy, settings):
    output, error = doctor("--check-token")
    assert error is None
    lines = marked(output)
    assert lines, output
    assert all(line.startswith("✓") for line in lines), output
    assert "✓ PIXEL_ID 1234567890" in lines
    assert "✓ API_VERSION v26.0 (no end of service announced)" in lines
    assert "✓ ACCESS_TOKEN is set (from DJANGO_CAPI)" in lines
    assert "✓ default: django_capi migrations applied" in lines
    assert "✓ other: django_capi migrations applied" in lines
    for alias in ALL_DATABASES:
        namespace = Installation.objects.using(alias).get().event_id_namespace
        assert (
            f"✓ {alias}: event ids under namespace {namespace}, stored in the database at "
            "migrate time" in lines
        )
    assert "✓ Meta accepts the token for pixel 1234567890" in lines
    assert output.rstrip().endswith("All good.")
    # The token check sent no event: nothing for Meta to record or count.
    (request,) = healthy.requests
    assert request.events == []
    assert healthy.received_events() == []
    assert settings.DJANGO_CAPI["ACCESS_TOKEN"] not in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_the_clock_skew_is_reported_in_seconds(healthy):
    output, _ = doctor()
    for alias in ALL_DATABASES:
        match = re.search(rf"✓ {alias}: database clock (\d+\.\d) s (ahead of|behind) ", output)
        assert match, output
        assert float(match[1]) < capi_doctor.MAX_CLOCK_SKEW


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_host_clock_off_by_more_than_5_seconds_is_a_warning(healthy, monkeypatch):
    monkeypatch.setattr(capi_doctor, "host_now", lambda: timezone.now() - timedelta(seconds=12))
    output, error = doctor()
    assert error is None  # a warning, not a failure
    assert "! default: database clock 12.0 s ahead of this host" in output
    assert "fix: sync both clocks with NTP" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_refused_token_is_a_cross_with_the_fix_and_exit_1(healthy, settings):
    healthy.access_tokens = ["a-different-token"]
    output, error = doctor("--check-token")
    assert error is not None
    assert error.returncode == 1
    assert "1 problem(s)" in str(error)
    assert "✗ Meta refused the token: Meta HTTP 401 code 190/467" in output
    assert "fix: The access token is invalid, expired or revoked" in output
    assert settings.DJANGO_CAPI["ACCESS_TOKEN"] not in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
@pytest.mark.parametrize(
    ("fault", "fix"),
    [
        (GraphError(200), "may not send events for pixel 1234567890"),
        (GraphError(100, 33, status=404), "Meta finds no pixel 1234567890"),
    ],
)
def test_a_token_without_access_to_the_pixel_is_a_cross(healthy, fault, fix):
    healthy.script(fault)
    output, error = doctor("--check-token")
    assert error is not None
    assert "✗ Meta refused the token" in output
    assert fix in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_throttled_token_check_is_inconclusive_not_a_failure(healthy):
    healthy.script(GraphError(4))
    output, error = doctor("--check-token")
    assert error is None
    assert "! Meta could not check the token" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_graph_api_out_of_reach_is_a_cross(healthy, settings):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "GRAPH_API_URL": f"http://127.0.0.1:{port}"}
    output, error = doctor("--check-token")
    assert error is not None
    assert f"✗ cannot reach the Graph API at http://127.0.0.1:{port}, so the token was not " in (
        output
    )
    assert "checked: could not reach the Graph API" in output
    assert "refused" not in output  # Meta said nothing: nothing answered
    assert "fix: This host cannot reach the Graph API" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_the_summary_is_printed_once(healthy):
    healthy.access_tokens = ["a-different-token"]
    output, error = doctor("--check-token")
    assert error is not None
    # Django prints the CommandError's message; the output does not repeat it.
    assert (output + str(error)).count("1 problem(s) ✗") == 1
    output, error = doctor()
    assert error is None
    assert output.count("All good.") + output.count("warning(s)") == 1


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_the_token_check_is_a_token_check_in_the_emulators_log(healthy):
    output, error = doctor("--check-token")
    assert error is None
    assert "✓ Meta accepts the token" in output
    (probe,) = healthy.requests
    assert probe.token_check
    line = describe_request(probe)
    assert "token check POST" in line
    assert "token and pixel accepted (no events sent)" in line
    assert "error" not in line


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_proxy_page_instead_of_meta_is_inconclusive(healthy):
    healthy.script(HttpStatus(502, "<html>Bad gateway</html>"))
    output, error = doctor("--check-token")
    assert error is None
    assert "! Meta could not check the token: " in output
    assert "HTTP 502 without a Graph API error body" in output
    assert "fix: Something other than the Graph API answered (a proxy?)" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_missing_middleware_is_the_warning_line_with_its_id(healthy, settings):
    settings.MIDDLEWARE = MIDDLEWARE[:-1]
    output, error = doctor()
    assert error is None
    assert "CapiMiddleware is not in MIDDLEWARE" in output
    (line,) = [line for line in marked(output) if "[django_capi.W001]" in line]
    assert line.startswith("! ")
    assert 'fix: Add "django_capi.middleware.CapiMiddleware" to MIDDLEWARE' in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_silenced_check_is_shown_but_does_not_count(healthy, settings):
    settings.MIDDLEWARE = MIDDLEWARE[:-1]
    settings.SILENCED_SYSTEM_CHECKS = ["django_capi.W001"]
    output, error = doctor()
    assert error is None
    assert "All good." in output
    (line,) = [line for line in marked(output) if "django_capi.W001" in line]
    assert line.startswith("· ")
    assert line.endswith("[django_capi.W001, silenced]")
    assert "CapiMiddleware is installed" not in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_missing_settings_are_crosses_with_their_ids(healthy, settings, monkeypatch):
    monkeypatch.delenv("CAPI_PIXEL_ID", raising=False)
    monkeypatch.delenv("CAPI_ACCESS_TOKEN", raising=False)
    settings.DJANGO_CAPI = {"WAKE": "none", "GRAPH_API_URL": healthy.url}
    output, error = doctor("--check-token")
    assert error is not None
    assert "3 problem(s)" in str(error)
    assert "[django_capi.E001]" in output
    assert "[django_capi.E002]" in output
    assert "✗ cannot check the token" in output
    assert healthy.requests == []


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_token_from_the_environment_is_named_by_its_source(healthy, settings, monkeypatch):
    token = settings.DJANGO_CAPI["ACCESS_TOKEN"]
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", token)
    settings.DJANGO_CAPI = {k: v for k, v in settings.DJANGO_CAPI.items() if k != "ACCESS_TOKEN"}
    output, error = doctor("--check-token")
    assert error is None
    assert "✓ ACCESS_TOKEN is set (from the CAPI_ACCESS_TOKEN variable)" in output
    assert "✓ Meta accepts the token" in output
    assert token not in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_invalid_settings_are_one_cross_and_the_rest_still_runs(healthy, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 5000}
    output, error = doctor()
    assert error is not None
    assert "✗ DJANGO_CAPI['BATCH_SIZE'] must be an integer from 1 to 1000 [django_capi.E003]" in (
        output
    )
    assert "✓ default: django_capi migrations applied" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_unapplied_migrations_are_a_cross_with_the_command(healthy):
    recorder = MigrationRecorder(connections["other"])
    latest = max(name for app, name in recorder.applied_migrations() if app == "django_capi")
    recorder.record_unapplied("django_capi", latest)
    try:
        output, error = doctor("--database", "other")
    finally:
        recorder.record_applied("django_capi", latest)
    assert error is not None
    assert "✗ other: 1 django_capi migration(s) not applied" in output
    assert "fix: python manage.py migrate django_capi --database other" in output
    assert "default:" not in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_an_unknown_database_is_refused(healthy):
    with pytest.raises(CommandError, match="no outbox in database"):
        call_command("capi_doctor", "--database", "nope", stdout=StringIO())


# --- Celery wiring ---------------------------------------------------------------------------


@pytest.fixture
def celery(healthy, settings):
    """The test project's Celery app as the current one, with a shared-looking cache."""
    from tests.celery_app import app

    app.set_current()
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "celery"}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache"}}
    return app


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_celery_wiring_is_checked(celery, settings):
    settings.CELERY_BEAT_SCHEDULE = {
        "capi-drain-outbox": {"task": "django_capi.drain_outbox", "schedule": 60.0}
    }
    output, error = doctor()
    assert error is None, output
    assert "✓ a broker is configured (redis)" in output
    assert "✓ the task django_capi.drain_outbox is registered" in output
    assert "✓ the beat schedule runs django_capi.drain_outbox" in output
    assert "redis://" not in output  # a broker URL may carry a password


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_beat_schedule_without_the_sweep_is_a_cross(celery, settings):
    settings.CELERY_BEAT_SCHEDULE = {"other": {"task": "shop.tasks.report", "schedule": 60.0}}
    output, error = doctor()
    assert error is not None
    assert "✗ the beat schedule has no entry for django_capi.drain_outbox" in output
    assert '"capi-drain-outbox": {"task": "django_capi.drain_outbox"' in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_celery_with_a_per_process_cache_is_the_warning_line(celery, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    output, _ = doctor()
    assert "[django_capi.W005]" in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_celery_without_a_broker_is_a_cross(celery, settings):
    from celery import Celery

    Celery("unconfigured", set_as_current=True)
    try:
        output, error = doctor()
    finally:
        celery.set_current()
    assert error is not None
    assert "✗ the Celery app 'unconfigured' has no broker" in output
    assert "fix: set CELERY_BROKER_URL" in output


# --- capi_test_event -------------------------------------------------------------------------


def send_test_event(*args: str) -> str:
    out = StringIO()
    call_command("capi_test_event", *args, stdout=out)
    return out.getvalue()


# No django_db mark: the command must not touch the database (the outbox least of all).
def test_a_test_event_reaches_meta_with_the_code(capi_graph, settings):
    output = send_test_event("--code", "TEST4242")
    (event,) = capi_graph.received_events()
    assert event.test_event_code == "TEST4242"
    assert event.event_name == "PageView"
    assert event.data["action_source"] == "system_generated"
    assert event.event_id is not None
    assert event.event_id.startswith("capi-test-event-")
    assert "external_id" in event.data["user_data"]
    (request,) = capi_graph.requests
    assert "HTTP 200: events_received=1" in output
    assert f"fbtrace_id={request.response['fbtrace_id']}" in output
    assert settings.DJANGO_CAPI["ACCESS_TOKEN"] not in output


def test_the_code_comes_from_the_setting(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "TEST_EVENT_CODE": "TEST77"}
    send_test_event("--event-name", "Lead")
    (event,) = capi_graph.received_events()
    assert (event.test_event_code, event.event_name) == ("TEST77", "Lead")


def test_each_run_has_its_own_event_id(capi_graph):
    send_test_event("--code", "T1")
    send_test_event("--code", "T1")
    assert len(set(capi_graph.event_ids())) == 2
    assert capi_graph.duplicates == []


def test_a_website_test_event_carries_the_url_and_user_agent(capi_graph):
    send_test_event(
        "--code", "T1", "--url", "https://shop.example.com/", "--user-agent", "Mozilla/5.0 test"
    )
    (event,) = capi_graph.received_events()
    assert event.data["action_source"] == "website"
    assert event.data["event_source_url"] == "https://shop.example.com/"
    assert event.data["user_data"]["client_user_agent"] == "Mozilla/5.0 test"


def test_a_website_test_event_needs_both_url_and_user_agent(capi_graph):
    with pytest.raises(CommandError, match="both --url and --user-agent"):
        send_test_event("--code", "T1", "--url", "https://shop.example.com/")
    assert capi_graph.requests == []


def test_without_a_test_code_nothing_is_sent(capi_graph):
    with pytest.raises(CommandError, match="No test event code") as raised:
        send_test_event()
    assert raised.value.returncode == 1
    assert capi_graph.requests == []


def test_a_refused_token_exits_non_zero_with_metas_message(capi_graph, settings):
    capi_graph.access_tokens = ["a-different-token"]
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("capi_test_event", "--code", "T1", stdout=out)
    assert raised.value.returncode == 1
    message = str(raised.value)
    assert "Meta HTTP 401 code 190/467" in message
    assert "The access token could not be decrypted" in message
    assert "Fix: The access token is invalid, expired or revoked" in message
    assert capi_graph.received_events() == []
    assert settings.DJANGO_CAPI["ACCESS_TOKEN"] not in message + out.getvalue()


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_the_namespace_setting_is_shown_as_the_source(healthy, settings):
    namespace = "0b7e7c1e-55d5-4a3c-9a52-0d5a9d8e6f10"
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "EVENT_ID_NAMESPACE": namespace}
    output, _ = doctor()
    assert (
        f"✓ default: event ids under namespace {namespace}, from the EVENT_ID_NAMESPACE "
        "setting" in marked(output)
    )


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_an_api_version_meta_no_longer_serves_is_a_warning_with_the_fix(healthy, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "API_VERSION": "v19.0"}
    output, error = doctor()
    assert error is None
    assert "! API_VERSION v19.0 has not been served since 2026-05-21" in output
    assert "[django_capi.W006]" in output
    assert 'fix: Set DJANGO_CAPI["API_VERSION"] to v26.0' in output


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_broker_without_a_loaded_celery_app_is_not_all_good(healthy, settings):
    from celery import Celery, current_app

    previous = current_app._get_current_object()
    settings.DJANGO_CAPI = {k: v for k, v in settings.DJANGO_CAPI.items() if k != "WAKE"}
    Celery("default", set_as_current=True)
    try:
        output, error = doctor()
    finally:
        previous.set_current()
    assert error is None
    assert "[django_capi.W007]" in output
    assert "fix: Import your Celery app" in output
    assert 'WAKE "none": commits queue no task' not in output
    assert not output.rstrip().endswith("All good.")
