"""``manage.py capi_drain``: deliver due events without Celery (cron, or a ``--loop`` service).

The command reports on stdout, so its drains are not logged as well: a project that shows
``django_capi`` INFO logs on the console would see every line twice.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from django_capi import alerts, outbox
from django_capi.client import GraphClient
from django_capi.conf import capi_settings
from django_capi.delivery import DrainReport, drain
from django_capi.management.options import add_database_option, outbox_databases

logger = logging.getLogger("django_capi.delivery")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: With ``--loop``, how long one database is drained before the next gets its turn.
LOOP_SLICE_SECONDS = 10.0


class Progress:
    """A run's running total, printed at most every ``every`` seconds while it lasts."""

    def __init__(self, write: Callable[[str], None], prefix: str, every: float) -> None:
        self.write, self.prefix, self.every = write, prefix, every
        self.report = DrainReport()
        self.earlier = DrainReport()  # what the run's drains before the current one did
        self.started = self.last_line = time.monotonic()

    def begin(self) -> None:
        """Another drain of the run starts: its totals add to what the run has done."""
        self.earlier = self.report

    def update(self, total: DrainReport) -> None:
        """``total``: the current drain's report so far."""
        report = DrainReport()
        report += self.earlier
        report += total
        self.report = report
        now = time.monotonic()
        if self.every > 0 and now - self.last_line >= self.every:
            self.last_line = now
            self.write(f"{self.prefix}… {self.line()}")

    def line(self) -> str:
        seconds = time.monotonic() - self.started
        rate = self.report.claimed / seconds if seconds > 0 else 0.0
        r = self.report
        return (
            f"claimed {r.claimed}, delivered {r.delivered}, failed {r.failed}, retrying "
            f"{r.retrying}, postponed {r.postponed}, requests {r.requests} in {seconds:.1f} s "
            f"({rate:,.0f} events/s)"
        )


class Command(BaseCommand):
    help = "Deliver due Conversions API events to Meta, then exit (or keep polling with --loop)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop", action="store_true", help="Keep polling until SIGTERM or SIGINT."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=5.0,
            help="Seconds between polls when nothing is due (with --loop; default 5).",
        )
        parser.add_argument(
            "--time-limit",
            type=float,
            default=None,
            help="Stop claiming new batches after this many seconds (without --loop), so "
            "cron runs never pile up.",
        )
        parser.add_argument(
            "--progress-every",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="While a backlog drains, print the running counts and rate this often "
            "(default 10; 0 for a summary only).",
        )
        add_database_option(
            parser,
            "Drain this database alias (repeatable). Default: every database with an outbox.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        databases = outbox_databases(options)
        every = options["progress_every"]
        if not options["loop"]:
            for alias in databases:
                progress = Progress(self._write, self._prefix(alias), every)
                report = drain(
                    using=alias,
                    time_limit=options["time_limit"],
                    on_batch=progress.update,
                    quiet=True,
                )
                self._write(f"{self._prefix(alias)}{report}")
                alerts.evaluate_safely(alias)
            return
        self.stopping = False
        previous = {signum: signal.signal(signum, self._stop) for signum in STOP_SIGNALS}
        try:
            self._loop(databases, options["interval"], every)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _loop(self, databases: list[str], interval: float, every: float) -> None:
        self._write("Draining the outbox; SIGTERM or Ctrl-C stops after the current batch.")
        client = GraphClient()
        runs: dict[str, Progress] = {}
        next_alert_check = 0.0
        while not self.stopping:
            if client.conf is not capi_settings():
                client.close()  # the settings changed: reconnect with the new ones
                client = GraphClient()
            claimed = 0
            for alias in databases:
                run = runs.get(alias) or Progress(self._write, self._prefix(alias), every)
                run.begin()
                report = self._drain_once(alias, client, run)
                claimed += report.claimed
                if report.claimed:
                    runs[alias] = run
                    run.update(report)
                elif alias in runs:
                    # Caught up: one line for everything delivered since the last one.
                    self._write(f"{self._prefix(alias)}caught up: {runs.pop(alias).line()}")
            if time.monotonic() >= next_alert_check:
                next_alert_check = time.monotonic() + alerts.WEB_CHECK_SECONDS
                for alias in databases:
                    alerts.evaluate_safely(alias)
            if not claimed:
                self._sleep(interval)
        for alias, run in runs.items():
            self._write(f"{self._prefix(alias)}stopping: {run.line()}")
        client.close()
        self._write("Stopped.")

    def _drain_once(self, alias: str, client: GraphClient, run: Progress) -> DrainReport:
        # A long-lived worker must survive a database restart or a deadlock: it logs, lets
        # Django drop the broken connection, and tries again on the next round.
        close_old_connections()
        try:
            # A stop request ends the drain after the batch in hand; another database waits
            # for one slice at most.
            return drain(
                using=alias,
                client=client,
                time_limit=LOOP_SLICE_SECONDS,
                on_batch=run.update,
                should_stop=lambda: self.stopping,
                quiet=True,
            )
        except Exception:
            logger.exception("django-capi drain of %r failed; retrying", alias)
            close_old_connections()
            return DrainReport()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))

    def _prefix(self, alias: str) -> str:
        return f"{alias}: " if len(outbox.databases()) > 1 else ""

    def _write(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # a service's log shows each line as it happens
