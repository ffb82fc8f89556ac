"""``manage.py capi_drain``: deliver due events without Celery (cron, or a ``--loop`` service)."""

from __future__ import annotations

import logging
import signal
import time
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
        add_database_option(
            parser,
            "Drain this database alias (repeatable). Default: every database with an outbox.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        databases = outbox_databases(options)
        if not options["loop"]:
            for alias in databases:
                self._report(alias, drain(using=alias, time_limit=options["time_limit"]))
                alerts.evaluate_safely(alias)
            return
        self.stopping = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        self.stdout.write("Draining the outbox; SIGTERM or Ctrl-C stops after the current batch.")
        client = GraphClient()
        next_alert_check = 0.0
        while not self.stopping:
            if client.conf is not capi_settings():
                client.close()  # the settings changed: reconnect with the new ones
                client = GraphClient()
            claimed = 0
            for alias in databases:
                claimed += self._drain_once(alias, client)
            if time.monotonic() >= next_alert_check:
                next_alert_check = time.monotonic() + alerts.WEB_CHECK_SECONDS
                for alias in databases:
                    alerts.evaluate_safely(alias)
            if not claimed:
                self._sleep(options["interval"])
        client.close()
        self.stdout.write("Stopped.")

    def _drain_once(self, alias: str, client: GraphClient) -> int:
        # A long-lived worker must survive a database restart or a deadlock: it logs, lets
        # Django drop the broken connection, and tries again on the next round.
        close_old_connections()
        try:
            # One batch at a time, so a stop request waits for one batch at most.
            report = drain(using=alias, client=client, max_batches=1)
        except Exception:
            logger.exception("django-capi drain of %r failed; retrying", alias)
            close_old_connections()
            return 0
        if report.claimed:
            self._report(alias, report)
        return report.claimed

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))

    def _report(self, alias: str, report: DrainReport) -> None:
        prefix = f"{alias}: " if len(outbox.databases()) > 1 else ""
        self.stdout.write(f"{prefix}{report}")
