"""``manage.py capi_purge``: keep as little as needed (run it daily, from cron or beat)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_capi import operations
from django_capi.conf import capi_settings


class Command(BaseCommand):
    help = (
        "Empty delivered events older than PURGE_DELIVERED_AFTER_DAYS (their deduplication key "
        "stays) and scrub the IP, user agent, fbc and fbp from events older than "
        "SCRUB_BROWSER_DATA_AFTER_DAYS that can no longer be sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--delivered-days",
            type=int,
            help="Empty delivered events older than this many days (default: the setting "
            "PURGE_DELIVERED_AFTER_DAYS).",
        )
        parser.add_argument(
            "--scrub-days",
            type=int,
            help="Remove IP, user agent, fbc and fbp from events that can no longer be sent "
            "after this many days (default: the setting SCRUB_BROWSER_DATA_AFTER_DAYS).",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="The database alias (default: where the router writes outbox events).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows per statement, so the table is never locked for long (default 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        conf = capi_settings()
        result = operations.purge(
            delivered_after_days=options["delivered_days"] or conf.purge_delivered_after_days,
            scrub_after_days=options["scrub_days"] or conf.scrub_browser_data_after_days,
            using=options["database"],
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
        )
        verb = "would be" if options["dry_run"] else "were"
        self.stdout.write(
            f"{result.deleted} delivered event(s) {verb} emptied (their keys stay); "
            f"{result.scrubbed} event(s) {verb} scrubbed of browser data."
        )
