"""Offline conversions from a CSV file: which column means what, and one row as an event.

Pure: rows come in as lists of strings and leave as ``OfflineRow`` values that
``events.build_event`` normalizes, hashes and validates like every other event; the command
``capi_import`` reads the file and writes the outbox. Problems never quote a cell: they are
printed next to the line number, and a cell may hold an email address.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .exceptions import EventValidationError
from .normalize import HASHED_KEYS, PLAIN_KEYS
from .text import is_storable
from .validation import MAX_EVENT_ID_LENGTH, check_event_name

#: The headers of Meta's offline event upload template and the ``user_data`` key each fills.
TEMPLATE_USER_DATA: dict[str, str] = {
    "email": "em",
    "phone": "ph",
    "fn": "fn",
    "ln": "ln",
    "zip": "zp",
    "ct": "ct",
    "st": "st",
    "country": "country",
    "dob": "db",
    "gen": "ge",
    "extern_id": "external_id",
}
#: Template headers that describe the event rather than the customer.
EVENT_FIELDS = ("event_name", "event_time", "value", "currency", "order_id")
#: A mapping target of this form puts the column in ``custom_data`` under the rest.
CUSTOM_DATA_PREFIX = "custom_data."
#: What a mapping file may map a column to (and ``custom_data.<name>``; null ignores it).
TARGETS = frozenset(
    {*TEMPLATE_USER_DATA, *EVENT_FIELDS, *HASHED_KEYS, *PLAIN_KEYS} - {"client_ip_address"}
)
#: Prefix of the event ids ``capi_import`` derives, so an imported order never takes the
#: outbox key of the website event that used the order number as its id.
EVENT_ID_PREFIX = "offline-"
#: Why a row spans several lines where it should not.
OPEN_QUOTE_HINT = "a quote left open? It takes in every line up to the next quote"


@dataclass(frozen=True)
class OfflineRow:
    """One CSV row read as an event: raw values, hashed later by ``build_event``."""

    event_name: str
    event_id: str
    event_time: datetime
    user_data: dict[str, str | list[str]] = field(default_factory=dict)
    custom_data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Columns:
    """What each column of a file means: its position and its target."""

    #: (position, target) for every column that is used, in file order.
    used: tuple[tuple[int, str], ...]
    #: Headers neither Meta's template nor the mapping names: left out, and said so.
    ignored: tuple[str, ...]
    #: The header's number of cells, which every row must have.
    width: int

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(target for _, target in self.used)


def read_mapping(text: str) -> dict[str, str | None]:
    """A mapping file's content: a JSON object from CSV header to target (``TARGETS``, or
    ``custom_data.<name>``, or null to ignore the column). Raises ``ValueError`` saying what
    is wrong with it."""
    twice: list[str] = []

    def object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # Headers compare without case or blanks: "Email" and "EMAIL " are one header, and
        # which of two targets won would be an accident of the file's order.
        names: set[str] = set()
        for header, _ in pairs:
            name = header.strip().lower()
            if name in names:
                twice.append(header)
            names.add(name)
        return dict(pairs)

    try:
        mapping = json.loads(text, object_pairs_hook=object_once)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the mapping file is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("the mapping file is not JSON: it is nested too deeply") from None
    if not isinstance(mapping, dict):
        raise ValueError('the mapping file must be a JSON object such as {"E-mail": "email"}')  # noqa: TRY004 - callers catch ValueError
    if twice:
        raise ValueError(f"the mapping file names the header {twice[0]!r} twice")
    problems = [
        f"{header!r} maps to {target!r}, which is not a user_data key, a template header "
        "or custom_data.<name>"
        for header, target in mapping.items()
        if target is not None and not _is_target(target)
    ]
    if problems:
        raise ValueError("; ".join(problems))
    return {header.strip().lower(): target for header, target in mapping.items()}


def _is_target(target: object) -> bool:
    if not isinstance(target, str):
        return False
    if target.startswith(CUSTOM_DATA_PREFIX):
        return bool(target.removeprefix(CUSTOM_DATA_PREFIX).strip())
    return target in TARGETS


def columns(header: Sequence[str], mapping: Mapping[str, str | None] | None = None) -> Columns:
    """The meaning of each header: the mapping's target, else the template header's own.
    Headers compare without case or surrounding blanks (and a UTF-8 byte order mark)."""
    mapping = mapping or {}
    used: list[tuple[int, str]] = []
    ignored: list[str] = []
    for position, raw in enumerate(header):
        name = raw.lstrip("\ufeff").strip().lower()
        target = mapping.get(name, name)
        if target is None:
            continue
        if _is_target(target):
            used.append((position, target))
        else:
            ignored.append(raw.strip())
    return Columns(tuple(used), tuple(ignored), len(header))


def read_row(
    row: Sequence[str], columns: Columns, *, event_name: str, action_source: str
) -> OfflineRow:
    """``row`` as an event; raise ``EventValidationError`` listing what makes it unusable.

    The event id is ``offline-<order_id>`` when the row has an order id, else derived from
    everything the row tells Meta, so importing the same file again finds the same events."""
    problems: list[str] = []
    if len(row) != columns.width:
        # A comma left unquoted shifts every cell after it: no cell can be trusted.
        problems.append(f"the row has {len(row)} cells and the header {columns.width}")
        if any("\n" in cell or "\r" in cell for cell in row):
            problems.append(OPEN_QUOTE_HINT)
        raise EventValidationError(problems)
    user_data: dict[str, str | list[str]] = {}
    custom_data: dict[str, str] = {}
    fields: dict[str, str] = {}
    content: list[tuple[str, str]] = []
    for position, target in columns.used:
        value = row[position].strip()
        if not value:
            continue
        if target.startswith(CUSTOM_DATA_PREFIX):
            # A note may well span lines; it is sent as it is.
            custom_data[target.removeprefix(CUSTOM_DATA_PREFIX).strip()] = value
            content.append((target, value))
            continue
        if "\n" in value or "\r" in value:
            # No id, time, amount or customer datum has one: a quote left open swallowed the
            # rows after it into this cell, other customers' data included.
            problems.append(f"the {target} cell holds a line break ({OPEN_QUOTE_HINT})")
            continue
        if target != "event_time":
            content.append((target, value))
        if target in EVENT_FIELDS:
            fields[target] = value
        else:
            key = TEMPLATE_USER_DATA.get(target, target)
            # Meta's template repeats a header (three email columns) for several values.
            earlier = user_data.get(key)
            if earlier is None:
                user_data[key] = value
            elif isinstance(earlier, list):
                earlier.append(value)
            else:
                user_data[key] = [earlier, value]
    name = fields.get("event_name", event_name)
    event_time: datetime | None = None
    if "event_time" not in fields:
        problems.append("event_time is empty (Meta requires the time of every event)")
    else:
        try:
            event_time = parse_event_time(fields["event_time"])
        except ValueError as exc:
            problems.append(str(exc))
        else:
            # The instant, however it is written (Unix seconds, ISO 8601 in any zone).
            content.append(("event_time", str(int(event_time.timestamp()))))
    for key in ("value", "currency"):
        if key in fields:
            custom_data[key] = fields[key]
    if "order_id" in fields:
        custom_data["order_id"] = fields["order_id"]
    if not name:
        problems.append("event_name is empty: give --event-name or an event_name column")
    elif not (is_storable(name) and is_storable(fields.get("order_id", ""))):
        problems.append("event_name or order_id holds NUL or is not UTF-8 text")
    else:
        problems += check_event_name(name)
    if problems:
        raise EventValidationError(problems)
    assert event_time is not None  # noqa: S101 - for mypy
    return OfflineRow(
        event_name=name,
        event_id=derived_event_id(fields.get("order_id"), content, name, action_source),
        event_time=event_time,
        user_data=user_data,
        custom_data=custom_data,
    )


def parse_event_time(text: str) -> datetime:
    """Unix seconds, or ISO 8601 (a time without a zone is UTC). Raise ``ValueError``.

    The window Meta accepts is ``validation``'s to check, for the event's action source."""
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite() or not 0 <= seconds < 10**11:
            raise ValueError("event_time is a number but not Unix seconds")
        return datetime.fromtimestamp(int(seconds), tz=UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            "event_time is neither Unix seconds nor ISO 8601 (2026-11-30T14:05:00+01:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def derived_event_id(
    order_id: str | None,
    content: Iterable[tuple[str, str]],
    event_name: str,
    action_source: str,
) -> str:
    """``offline-<order_id>``, or ``offline-`` and a digest of ``content``, the row's
    (target, value) pairs: sorted, so neither the columns' order nor columns left out change
    the id of a re-exported file. A long order id is digested too, so the id always fits the
    outbox's column."""
    parts: list[str]
    if order_id is not None:
        event_id = f"{EVENT_ID_PREFIX}{order_id}"
        if len(event_id) <= MAX_EVENT_ID_LENGTH:
            return event_id
        parts = ["order_id", order_id]
    else:
        pairs = sorted(f"{target}\x1e{value}" for target, value in content)
        parts = [event_name, action_source, *pairs]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{EVENT_ID_PREFIX}{digest[:40]}"
