"""``manage.py capi_replay``: send failed events again, from the command line."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import is_naive, make_aware

from django_capi import operations
from django_capi.models import OutboxEvent


class Command(BaseCommand):
    help = "Replay failed Conversions API events: a fresh attempts budget, then delivery."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            default=OutboxEvent.Status.FAILED,
            choices=[OutboxEvent.Status.FAILED, OutboxEvent.Status.CANCELLED],
            help="Which rows to replay (default: failed).",
        )
        parser.add_argument(
            "--reason",
            choices=OutboxEvent.FailureReason.values,
            help="Only events that failed for this reason (the admin's failure reason filter).",
        )
        parser.add_argument("--event-name", help="Only events with this name.")
        parser.add_argument("--since", help="Created at or after (YYYY-MM-DD or ISO time).")
        parser.add_argument("--until", help="Created before (YYYY-MM-DD or ISO time).")
        parser.add_argument(
            "--database", default="default", help="The database alias (default: default)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be replayed; change nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows replayed per transaction, with a progress line each (default 1000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = OutboxEvent.objects.using(options["database"]).filter(status=options["status"])
        if options["reason"]:
            rows = rows.filter(failure_reason=options["reason"])
        if options["event_name"]:
            rows = rows.filter(event_name=options["event_name"])
        if options["since"]:
            rows = rows.filter(created_at__gte=_moment(options["since"], "--since"))
        if options["until"]:
            rows = rows.filter(created_at__lt=_moment(options["until"], "--until"))
        ids = list(rows.order_by("pk").values_list("pk", flat=True))
        if options["dry_run"]:
            self.stdout.write(f"{len(ids)} event(s) would be replayed (dry run).")
            return
        done = 0
        total = {"replayed": 0, "too_old": 0, "unbuilt": 0, "skipped": 0}
        for start in range(0, len(ids), options["batch_size"]):
            chunk = ids[start : start + options["batch_size"]]
            result = operations.replay(
                OutboxEvent.objects.using(options["database"]).filter(pk__in=chunk)
            )
            for key in total:
                total[key] += getattr(result, key)
            done += len(chunk)
            self.stdout.write(f"{done}/{len(ids)}: {result}")
        self.stdout.write(str(operations.ReplayResult(**total)))


def _moment(text: str, option: str) -> datetime:
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        if day is None:
            raise CommandError(f"{option} must be YYYY-MM-DD or an ISO date and time")
        moment = datetime(day.year, day.month, day.day)
    return make_aware(moment) if is_naive(moment) else moment
