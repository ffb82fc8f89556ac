"""``manage.py capi_doctor``: a checklist of everything events depend on, with the fix for
each problem.

✓ fine, ! works but worse than it could (or could not be verified), ✗ events are lost, stuck
or refused, · not checked. The exit status is 1 when any line is ✗. The system checks
(``checks.py``) supply the lines they cover, with their ids; the doctor adds what only a live
process can see: the databases, their clocks, the Celery app and, with ``--check-token``,
Meta's opinion of the token. The token itself is never printed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.checks import ERROR, CheckMessage, run_checks
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from django_capi import checks, installation, outbox
from django_capi.client import ErrorKind, GraphClient, graph_failure_fix
from django_capi.conf import (
    SETTING_NAME,
    CapiSettings,
    PixelSettings,
    api_version_end,
    capi_settings,
)
from django_capi.exceptions import CapiConfigurationError
from django_capi.management.options import add_database_option, outbox_databases

OK, WARN, FAIL, SKIPPED = "✓", "!", "✗", "·"
DRAIN_TASK = "django_capi.drain_outbox"
#: Above this the host and the database disagree enough to matter: event times are stamped
#: by this host while expiry and leases follow the database.
MAX_CLOCK_SKEW = 5.0

#: Which section prints the system check messages of each id.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Settings": ("E003", "E001", "E002", "W003", "W006"),
    "Middleware": ("W001", "W002"),
    "Delivery": ("W007", "W004", "W005"),
    "Databases": ("E004", "E005", "W008"),
}


#: System check messages by id.
Messages = dict[str, list[CheckMessage]]


def host_now() -> datetime:
    """This host's clock (a seam for tests of the skew report)."""
    return timezone.now()


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: int = 0
    warnings: int = 0

    def section(self, title: str) -> None:
        self.lines.append(f"\n{title}")

    def add(self, mark: str, text: str, fix: str = "") -> None:
        self.failures += mark == FAIL
        self.warnings += mark == WARN
        self.lines.append(f"  {mark} {text}")
        if fix:
            self.lines.append(f"      fix: {fix}")


class Command(BaseCommand):
    help = (
        "Check django-capi's settings, middleware, Celery wiring, databases, clocks and (with "
        "--check-token) the access token; print the fix for each problem."
    )
    requires_system_checks: list[str] = []  # the doctor reports them itself, with fixes

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check-token",
            action="store_true",
            help="Ask Meta whether the token may post to the pixel (a request with no events: "
            "nothing is recorded).",
        )
        add_database_option(
            parser, "Check this outbox database alias (repeatable). Default: every one."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        databases = outbox_databases(options)
        messages: Messages = {}
        for message in run_checks(tags=[checks.TAG], databases=databases):
            if (message.id or "").startswith("django_capi."):
                messages.setdefault(message.id or "", []).append(message)
        try:
            conf: CapiSettings | None = capi_settings()
        except CapiConfigurationError:
            conf = None
        report = Report()
        self._settings(report, conf, messages)
        self._middleware(report, messages)
        self._delivery(report, conf, messages)
        self._databases(report, databases, messages)
        self._token(report, conf, check=options["check_token"])
        self._other_checks(report, messages)
        self.stdout.write("django-capi doctor")
        for line in report.lines:
            self.stdout.write(line)
        summary = f"{report.failures} problem(s) ✗, {report.warnings} warning(s) !"
        if report.failures:
            # Django prints the error's message: the summary's one line, on stderr.
            self.stdout.write("")
            raise CommandError(f"{summary}: see the fixes above.")
        self.stdout.write(f"\n{summary}" if report.warnings else "\nAll good.")

    # --- sections ---------------------------------------------------------------------------

    def _settings(self, report: Report, conf: CapiSettings | None, messages: Messages) -> None:
        report.section("Settings")
        if not _from_checks(report, messages, "E003"):
            report.add(OK, f"{SETTING_NAME} is valid")
        if conf is None:
            return
        if not _from_checks(report, messages, "E001"):
            report.add(OK, f"PIXEL_ID {conf.pixel_id}")
        if not _from_checks(report, messages, "E002"):
            # Where it comes from, never what it is.
            in_settings = "ACCESS_TOKEN" in (getattr(settings, SETTING_NAME, None) or {})
            source = SETTING_NAME if in_settings else "the CAPI_ACCESS_TOKEN variable"
            report.add(OK, f"ACCESS_TOKEN is set (from {source})")
        if not _from_checks(report, messages, "W003"):
            where = "set (DEBUG is on)" if conf.test_event_code else "not set"
            report.add(OK, f"TEST_EVENT_CODE {where}")
        if not _from_checks(report, messages, "W006"):
            end = api_version_end(conf.api_version)
            until = f"served until {end.isoformat()}" if end else "no end of service announced"
            report.add(OK, f"API_VERSION {conf.api_version} ({until})")
        proof = "set: requests carry appsecret_proof" if conf.app_secret else "not set"
        report.add(OK, f"APP_SECRET {proof}")
        if set(conf.pixels) - {conf.pixel_id}:
            for pixel in conf.pixels.values():
                report.add(*_pixel_line(pixel, default=pixel.pixel_id == conf.pixel_id))

    def _middleware(self, report: Report, messages: Messages) -> None:
        report.section("Middleware")
        problems = _from_checks(report, messages, "W001", "W002")
        if problems:
            return
        if checks.capi_middleware_installed():
            report.add(OK, "CapiMiddleware is installed after the session and auth middleware")
        else:
            report.add(
                OK,
                "CapiMiddleware is not installed, and no Django template engine can "
                "use the capi tags",
            )

    def _delivery(self, report: Report, conf: CapiSettings | None, messages: Messages) -> None:
        report.section("Delivery")
        if conf is None:
            report.add(FAIL, "WAKE unknown: the settings are invalid", fix="see Settings above")
            return
        if conf.wake != "celery":
            if _from_checks(report, messages, "W007"):
                return
            report.add(
                OK,
                'WAKE "none": commits queue no task; run `capi_drain` from cron or '
                "`capi_drain --loop` as a service",
            )
            return
        report.add(OK, 'WAKE "celery": each commit with events queues one drain task')
        try:
            from celery import current_app
        except ImportError:
            report.add(
                FAIL,
                "Celery is not installed",
                fix='pip install "django-capi[celery]", or set WAKE to "none" and run capi_drain',
            )
            return
        broker = current_app.conf.broker_url
        if broker:
            # Only the scheme: the URL may carry a password.
            report.add(OK, f"a broker is configured ({str(broker).split(':', 1)[0]})")
        else:
            report.add(
                FAIL,
                f"the Celery app {current_app.main!r} has no broker: tasks go nowhere",
                fix="set CELERY_BROKER_URL and load the Celery app in your project's __init__.py",
            )
        try:
            # What a worker does at startup: import the tasks modules autodiscovery finds.
            current_app.loader.import_default_modules()
        except Exception as exc:  # noqa: BLE001 - the integrator's modules: report, not crash
            report.add(
                FAIL,
                f"importing the Celery task modules failed ({type(exc).__name__}: {exc})",
                fix="run `celery -A yourproject worker` to see the traceback",
            )
            return
        if DRAIN_TASK in current_app.tasks:
            report.add(OK, f"the task {DRAIN_TASK} is registered")
        else:
            report.add(
                FAIL,
                f"the task {DRAIN_TASK} is not registered in the Celery app {current_app.main!r}",
                fix="call app.autodiscover_tasks() in your Celery module (or add "
                '"django_capi.tasks" to CELERY_IMPORTS)',
            )
        self._beat(report, current_app)
        _from_checks(report, messages, "W004", "W005")

    def _beat(self, report: Report, app: Any) -> None:
        schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", None)
        if schedule is None:
            schedule = app.conf.beat_schedule or None
        entry = f'"capi-drain-outbox": {{"task": "{DRAIN_TASK}", "schedule": 60.0}}'
        if not schedule:
            report.add(
                WARN,
                f"no beat schedule found for {DRAIN_TASK}: without the sweep, retries and lost "
                "wake-ups are never delivered",
                fix=f"add to CELERY_BEAT_SCHEDULE {entry} (or the same periodic task in a "
                "database scheduler) and run exactly one `celery beat`",
            )
        elif any(
            isinstance(item, dict) and item.get("task") == DRAIN_TASK for item in schedule.values()
        ):
            report.add(OK, f"the beat schedule runs {DRAIN_TASK}")
        else:
            report.add(
                FAIL,
                f"the beat schedule has no entry for {DRAIN_TASK}: retries and lost wake-ups are "
                "never delivered",
                fix=f"add to CELERY_BEAT_SCHEDULE {entry}",
            )

    def _databases(self, report: Report, databases: Iterable[str], messages: Messages) -> None:
        report.section("Databases")
        _from_checks(report, messages, "E004", "E005", "W008")
        for alias in databases:
            connection = connections[alias]
            try:
                pending = _unapplied_migrations(alias)
                skew = _clock_skew(alias)
            except DatabaseError as exc:  # the point is to report it
                report.add(
                    FAIL,
                    f"{alias}: cannot query the database ({type(exc).__name__}: {exc})",
                    fix=f"check DATABASES[{alias!r}] and that the server is up",
                )
                continue
            if connection.features.has_select_for_update_skip_locked:
                report.add(OK, f"{alias}: {connection.vendor}, claims skip locked rows")
            else:
                report.add(
                    OK,
                    f"{alias}: {connection.vendor}, claims by compare-and-set (one drainer at a "
                    "time works best)",
                )
            if pending:
                report.add(
                    FAIL,
                    f"{alias}: {len(pending)} django_capi migration(s) not applied",
                    fix=f"python manage.py migrate django_capi --database {alias}",
                )
            else:
                report.add(OK, f"{alias}: django_capi migrations applied")
            namespace, source = installation.describe_namespace(alias)
            report.add(OK, f"{alias}: event ids under namespace {namespace}, {source}")
            direction = "ahead of" if skew > 0 else "behind"
            clock = f"{alias}: database clock {abs(skew):.1f} s {direction} this host"
            if abs(skew) > MAX_CLOCK_SKEW:
                report.add(
                    WARN,
                    clock,
                    fix="sync both clocks with NTP: events are stamped by this host, but expiry "
                    "and leases follow the database",
                )
            else:
                report.add(OK, clock)

    def _token(self, report: Report, conf: CapiSettings | None, *, check: bool) -> None:
        report.section("Meta")
        if not check:
            report.add(SKIPPED, "token not checked with Meta (add --check-token)")
            return
        pixels = [] if conf is None else [p for p in conf.pixels.values() if p.access_token]
        if conf is None or not pixels:
            report.add(FAIL, "cannot check the token", fix="fix the settings above first")
            return
        client = GraphClient(conf)
        try:
            for pixel in pixels:  # one line each; a pixel without a token is E002 above
                self._check_token(report, client, pixel, several=len(conf.pixels) > 1)
        finally:
            client.close()

    def _check_token(
        self, report: Report, client: GraphClient, pixel: PixelSettings, *, several: bool
    ) -> None:
        # No events: Meta authenticates the token and the pixel first, then refuses the empty
        # data with code 100. Nothing is recorded, even without a test code.
        result = client.post_events(pixel.pixel_id, [])
        error = result.error
        if error is None or error.kind is ErrorKind.INVALID:
            report.add(OK, f"Meta accepts the token for pixel {pixel.pixel_id}")
            return
        fix = graph_failure_fix(error, result.http_status, pixel.pixel_id)
        where = f" for pixel {pixel.pixel_id}" if several else ""
        if result.http_status is None:
            # Nothing answered: Meta said nothing about the token, but no event gets out.
            report.add(
                FAIL,
                f"cannot reach the Graph API at {_without_userinfo(client.conf.graph_api_url)}, "
                f"so the token{where} was not checked: {error.describe(result.http_status)}",
                fix=fix,
            )
            return
        mark = FAIL if error.kind is ErrorKind.SETUP else WARN
        what = "refused the token" if mark == FAIL else "could not check the token"
        report.add(mark, f"Meta {what}{where}: {error.describe(result.http_status)}", fix=fix)

    def _other_checks(self, report: Report, messages: Messages) -> None:
        """Messages of ids this version of the doctor has no section for."""
        placed = {f"django_capi.{suffix}" for ids in SECTIONS.values() for suffix in ids}
        rest = sorted(key for key in messages if key not in placed)
        if rest:
            report.section("Other system checks")
            _from_checks(report, messages, *rest)


def _from_checks(report: Report, messages: Messages, *ids: str) -> bool:
    """Add the system check messages of ``ids``; return whether there were any."""
    found = False
    for suffix in ids:
        key = suffix if suffix.startswith("django_capi.") else f"django_capi.{suffix}"
        for message in messages.get(key, ()):
            found = True
            if message.is_silenced():
                # Shown, so a silenced problem is never listed as fine; it does not count.
                report.add(SKIPPED, f"{message.msg} [{key}, silenced]")
            else:
                mark = FAIL if message.level >= ERROR else WARN
                report.add(mark, f"{message.msg} [{key}]", fix=message.hint or "")
    return found


def _without_userinfo(url: str) -> str:
    """The URL without a ``user:password@`` a proxy setup may have put in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _pixel_line(pixel: PixelSettings, *, default: bool) -> tuple[str, str, str]:
    """One pixel's settings, without its token or app secret."""
    parts = [
        "token set" if pixel.access_token else "no token",
        f"test code {'set' if pixel.test_event_code else 'not set'}",
        f"API {pixel.api_version}",
        f"app secret {'set' if pixel.app_secret else 'not set'}",
    ]
    text = f"pixel {pixel.pixel_id}{' (default)' if default else ''}: {', '.join(parts)}"
    if pixel.access_token:
        return OK, text, ""
    return FAIL, text, f"set its ACCESS_TOKEN in {SETTING_NAME}['PIXELS']"


def _unapplied_migrations(alias: str) -> list[Any]:
    executor = MigrationExecutor(connections[alias])
    targets = [node for node in executor.loader.graph.leaf_nodes() if node[0] == "django_capi"]
    # The plan includes other apps' migrations django_capi depends on: count its own.
    return [m for m, _ in executor.migration_plan(targets) if m.app_label == "django_capi"]


def _clock_skew(alias: str) -> float:
    """Seconds the database's clock is ahead of this host's, against the middle of the query's
    round trip."""
    before = host_now()
    db_now = outbox.database_now(alias)
    after = host_now()
    skew: timedelta = db_now - (before + (after - before) / 2)
    return skew.total_seconds()
