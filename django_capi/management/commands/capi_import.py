"""``manage.py capi_import``: offline conversions (store and phone sales) from a CSV file.

The file is read row by row and written in batches, so a million rows take the memory of
one batch. Every row becomes an event exactly as ``send_event`` builds one (normalized,
hashed, validated for its action source); its id derives from the order id, or from the
row, so importing a file again writes nothing new.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import router, transaction

from django_capi import offline, outbox
from django_capi.conf import capi_settings
from django_capi.constants import ActionSource
from django_capi.events import (
    BuiltEvent,
    EventDraft,
    build_event,
    default_pixel_id,
    record_built_events,
    recorded_events,
)
from django_capi.exceptions import CapiConfigurationError, EventValidationError
from django_capi.models import OutboxEvent
from django_capi.text import is_storable
from django_capi.validation import check_event_name

#: Rows written per transaction: one bulk INSERT each.
BATCH_SIZE = 1000
#: Action sources whose events need what no CSV column carries (Meta's requirements,
#: ``sources`` and ``validation``): every row would fail the same way.
UNSUPPORTED_SOURCES = {
    ActionSource.WEBSITE: "Meta requires event_source_url and the browser's user agent of "
    "website events, which no column carries; record them with send_event(request=...)",
    ActionSource.APP: "Meta requires app_data (the device's extinfo) of app events, which no "
    "column carries; record them with send_event(app_data=...)",
    ActionSource.BUSINESS_MESSAGING: "Meta requires the messaging_channel of business-messaging "
    "events, which no column carries; record them with send_event(messaging_channel=...)",
}


class Command(BaseCommand):
    help = (
        "Import offline conversions from a CSV file (Meta's offline upload template headers, "
        "or any headers with --mapping) into the outbox, which the drainer sends."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="The CSV file (UTF-8, a header row first).")
        parser.add_argument(
            "--event-name",
            help="The event of rows without an event_name column or cell, e.g. Purchase.",
        )
        parser.add_argument(
            "--action-source",
            default=ActionSource.PHYSICAL_STORE,
            choices=ActionSource.values,
            help="Where the conversions happened (default physical_store).",
        )
        parser.add_argument(
            "--mapping",
            type=Path,
            help='A JSON file mapping CSV headers to targets, e.g. {"E-mail": "email", '
            '"Basket": "custom_data.num_items"}.',
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check every row and report the invalid ones; write nothing.",
        )
        parser.add_argument(
            "--database", help="The database alias of the outbox (default: the router's)."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            help=f"Rows checked and written together (default {BATCH_SIZE}): the memory the "
            "import takes, whatever the file's length.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"] or router.db_for_write(OutboxEvent)
        if using not in outbox.databases():
            raise CommandError(f"no outbox in database {using}")
        try:
            # The pixel is part of every event's key: even a dry run needs it.
            default_pixel_id()
        except CapiConfigurationError as exc:
            raise CommandError(str(exc)) from None
        unsupported = UNSUPPORTED_SOURCES.get(options["action_source"])
        if unsupported:
            raise CommandError(f"--action-source {options['action_source']}: {unsupported}")
        if options["event_name"]:
            # Every row would fail the same way: one error, before the file is read.
            problems = check_event_name(options["event_name"])
            if problems:
                raise CommandError(f"--event-name: {'; '.join(problems)}")
        mapping = None
        if options["mapping"] is not None:
            try:
                mapping = offline.read_mapping(options["mapping"].read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CommandError(f"--mapping: {exc}") from None
        try:
            raw = options["file"].open("rb")
        except OSError as exc:
            raise CommandError(f"cannot read {options['file']}: {exc.strerror}") from None
        with raw:
            importer = _Import(
                self,
                raw,
                mapping=mapping,
                event_name=options["event_name"] or "",
                action_source=options["action_source"],
                using=using,
                dry_run=options["dry_run"],
                batch_size=max(1, options["batch_size"]),
            )
            importer.run()


class _Import:
    """One run over one file: reading, batching, progress and the counts."""

    def __init__(
        self,
        command: BaseCommand,
        raw: io.BufferedReader,
        *,
        mapping: dict[str, str | None] | None,
        event_name: str,
        action_source: str,
        using: str,
        dry_run: bool,
        batch_size: int,
    ) -> None:
        self.command = command
        self.raw = raw
        self.size = os.fstat(raw.fileno()).st_size
        self.mapping = mapping
        self.event_name = event_name
        self.action_source = action_source
        self.using = using
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.settings = capi_settings()
        self.read = self.written = self.already = self.invalid = 0
        self.progress = _Progress(command.stderr)

    def run(self) -> None:
        if self.raw.peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise CommandError("the file is UTF-16: save it as CSV UTF-8 (comma delimited)")
        # surrogateescape: a byte that is not UTF-8 fails its row, not the whole run.
        text = io.TextIOWrapper(
            self.raw, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        rows = self._rows(csv.reader(text))
        first = next(rows, None)
        if first is None or isinstance(first[1], str):
            raise CommandError("the file has no header row")
        columns = offline.columns(first[1], self.mapping)
        if not columns.used:
            for separator in (";", "\t"):
                if len(first[1]) == 1 and separator in first[1][0]:
                    raise CommandError(
                        f"the file is separated by {separator!r}, not commas: save it as CSV "
                        "(comma delimited)"
                    )
            raise CommandError(
                "no column is one of Meta's offline template headers (email, phone, fn, ln, "
                "zip, ct, st, country, dob, gen, extern_id, event_name, event_time, value, "
                "currency, order_id) or mapped by --mapping"
            )
        if columns.ignored:
            self.command.stderr.write(
                f"Ignored columns: {', '.join(columns.ignored)}", style_func=_plain
            )
        batch: list[tuple[int, list[str] | str]] = []
        for line, row in rows:
            self.read += 1
            batch.append((line, row))
            if len(batch) >= self.batch_size:
                self._flush(batch, columns)
            if self.read % 256 == 0:
                self.progress.update(self.raw.tell(), self.size, self.read)
        self._flush(batch, columns)
        self.progress.done(self.read)
        verb = "would write" if self.dry_run else "written"
        self.command.stdout.write(
            f"{self.read} rows read: {self.written} {verb}, "
            f"{self.already} already imported, {self.invalid} invalid"
        )

    def _rows(self, reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str] | str]]:
        """(line number where the row starts, its cells or why csv cannot read it)."""
        line = 1
        while True:
            try:
                row: list[str] | str = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row = f"not readable as CSV ({exc})"
            start, line = line, reader.line_num + 1  # type: ignore[attr-defined]
            if row:  # blank lines are no rows
                yield start, row

    def _flush(self, batch: list[tuple[int, list[str] | str]], columns: offline.Columns) -> None:
        """Parse the rows, skip those already recorded (unbuilt: a re-run costs little more
        than reading the file), build the others and write them in one transaction."""
        parsed: list[tuple[int, offline.OfflineRow | str]] = []
        for line, row in batch:
            parsed.append((line, self._parse(row, columns)))
        batch.clear()
        keys = {
            (event.event_name, event.event_id)
            for _, event in parsed
            if isinstance(event, offline.OfflineRow)
        }
        seen = recorded_events(keys, using=self.using)
        built: list[BuiltEvent] = []
        for line, event in parsed:
            if isinstance(event, str):
                self._report(line, event)
                continue
            key = (event.event_name, event.event_id)
            if key in seen:
                self.already += 1
                continue
            seen.add(key)  # the same order twice in the file is one event
            try:
                built.append(self._build(event))
            except EventValidationError as exc:
                self._report(line, str(exc))
        if built:
            with transaction.atomic(using=self.using):
                written = record_built_events(built, using=self.using, dry_run=self.dry_run)
            self.written += written
            self.already += len(built) - written  # recorded by another run meanwhile

    def _parse(self, row: list[str] | str, columns: offline.Columns) -> offline.OfflineRow | str:
        if isinstance(row, str):
            return row
        if not all(is_storable(cell) for cell in row):
            return "a cell holds NUL or is not UTF-8 text (save the file as UTF-8)"
        try:
            return offline.read_row(
                row, columns, event_name=self.event_name, action_source=self.action_source
            )
        except EventValidationError as exc:
            return str(exc)

    def _build(self, event: offline.OfflineRow) -> BuiltEvent:
        return build_event(
            EventDraft(
                event_name=event.event_name,
                event_id=event.event_id,
                event_time=event.event_time,
                action_source=self.action_source,
                user_data=event.user_data,
                custom_data=event.custom_data,
                limited_data_use=self.settings.limited_data_use,
            ),
            default_phone_region=self.settings.default_phone_region,
        )

    def _report(self, line: int, reason: str) -> None:
        self.invalid += 1
        self.progress.clear()
        self.command.stderr.write(f"line {line}: {reason}")


class _Progress:
    """A bar redrawn in place on a terminal; plain lines at every tenth of the file when the
    output goes to a file or a pipe (a CI log, cron mail)."""

    WIDTH = 30

    def __init__(self, stream: OutputWrapper) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.next_tenth = 1
        self.next_draw = 0.0
        self.drawn = False

    def update(self, position: int, size: int, rows: int) -> None:
        fraction = min(1.0, position / size) if size else 1.0
        if self.tty:
            now = time.monotonic()
            if now >= self.next_draw:
                self.next_draw = now + 0.1
                filled = int(fraction * self.WIDTH)
                bar = "#" * filled + "-" * (self.WIDTH - filled)
                self._write(f"\r[{bar}] {fraction:4.0%} {rows:,} rows", ending="")
                self.drawn = True
        elif fraction * 10 >= self.next_tenth and fraction < 1.0:
            self.next_tenth = int(fraction * 10) + 1
            self._write(f"{fraction:.0%} of the file, {rows:,} rows")

    def clear(self) -> None:
        if self.drawn:
            self._write("\r\033[K", ending="")
            self.drawn = False

    def done(self, rows: int) -> None:
        self.clear()
        self._write(f"100% of the file, {rows:,} rows")

    def _write(self, text: str, ending: str | None = None) -> None:
        # Plain: on a terminal Django styles everything on stderr as an error.
        self.stream.write(text, style_func=_plain, ending=ending)
        self.stream.flush()


def _plain(text: str) -> str:
    return text
