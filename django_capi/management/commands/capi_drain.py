"""``manage.py capi_drain``: deliver due events without Celery (cron, or a ``--loop`` service)."""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_capi.client import GraphClient
from django_capi.conf import capi_settings
from django_capi.delivery import DrainReport, drain


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

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["loop"]:
            self._report(drain())
            return
        self.stopping = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        self.stdout.write("Draining the outbox; SIGTERM or Ctrl-C stops after the current batch.")
        client = GraphClient()
        while not self.stopping:
            if client.conf is not capi_settings():
                client.close()  # the settings changed: reconnect with the new ones
                client = GraphClient()
            # One batch at a time, so a stop request waits for one batch at most.
            report = drain(client=client, max_batches=1)
            if report.claimed:
                self._report(report)
            else:
                self._sleep(options["interval"])
        client.close()
        self.stdout.write("Stopped.")

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))

    def _report(self, report: DrainReport) -> None:
        self.stdout.write(str(report))
