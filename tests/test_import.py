"""``manage.py capi_import``: offline conversions from a CSV file into the outbox."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
import tracemalloc
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_capi import OutboxEvent, offline
from django_capi.delivery import drain
from tests.database_dump import dump_database

pytestmark = pytest.mark.django_db(transaction=True)

DAY = 86400


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def capi_import(path: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("capi_import", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_metas_template_headers_become_hashed_events_the_drainer_delivers(tmp_path, capi_graph):
    now = int(time.time())
    header = [
        "email", "email", "phone", "fn", "ln", "zip", "ct", "st", "country", "dob", "gen",
        "extern_id", "event_name", "event_time", "value", "currency", "order_id",
    ]  # fmt: skip
    rows = [
        [
            "Ann@Example.com", "ann.work@example.com", "+1 (650) 555-0101", "Ann", "Lee",
            "94025", "Menlo Park", "CA", "US", "1987-01-02", "F", "crm-1", "Purchase",
            now - 3600, "19.99", "usd", "R-1",
        ],
        # An ISO 8601 time with its zone, and 30 days old: a store sale may be 62 days old.
        [
            "bob@example.com", "", "", "", "", "", "", "", "", "", "", "", "Purchase",
            time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 30 * DAY)),
            "5", "EUR", "R-2",
        ],
        # The event_name cell wins over --event-name; a naive ISO time is UTC.
        [
            "carol@example.com", "", "", "", "", "", "", "", "", "", "", "", "Lead",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - DAY)), "", "", "",
        ],
    ]  # fmt: skip
    path = write_csv(tmp_path / "store.csv", header, rows)

    out, err = capi_import(path, "--event-name", "Purchase")

    assert out.strip() == "3 rows read: 3 written, 0 already imported, 0 invalid"
    assert "line " not in err
    ann = OutboxEvent.objects.get(event_id="offline-R-1")
    assert ann.status == OutboxEvent.Status.PENDING
    assert ann.action_source == "physical_store"
    user_data = ann.payload["user_data"]
    assert user_data["em"] == [sha256("ann@example.com"), sha256("ann.work@example.com")]
    assert user_data["ph"] == sha256("16505550101")
    assert user_data["db"] == sha256("19870102")
    assert user_data["ge"] == sha256("f")
    assert user_data["external_id"] == sha256("crm-1")
    assert ann.payload["custom_data"] == {"value": 19.99, "currency": "USD", "order_id": "R-1"}
    assert ann.payload["event_time"] == now - 3600
    assert OutboxEvent.objects.get(event_id="offline-R-2").payload["event_time"] == now - 30 * DAY
    carol = OutboxEvent.objects.get(event_name="Lead")
    assert carol.payload["event_time"] == now - DAY
    assert carol.event_id.startswith("offline-")  # no order id: derived from the row
    dump = dump_database().lower()
    for raw in ("ann@example.com", "ann.work", "555-0101", "menlo", "1987-01-02", "crm-1"):
        assert raw not in dump

    assert drain().delivered == 3
    received = {event.data["event_id"]: event.data for event in capi_graph.received_events()}
    assert set(received) == {"offline-R-1", "offline-R-2", carol.event_id}
    assert received["offline-R-1"]["action_source"] == "physical_store"
    assert received["offline-R-1"]["user_data"]["em"] == user_data["em"]


@pytest.mark.once
def test_a_100000_row_file_streams_with_progress_exact_errors_and_a_no_op_rerun(tmp_path):
    now = int(time.time())
    header = ["email", "event_time", "value", "currency", "order_id"]

    def rows(count: int, prefix: str, *, broken: dict[int, list[object]]):
        for i in range(count):
            yield broken.get(i) or [
                f"c{i}@example.com",
                now - 60 - i,
                "12.50",
                "EUR",
                f"{prefix}{i}",
            ]

    broken = {
        7: ["a@example.com", "yesterday", "1", "EUR", "X7"],
        500: ["b@example.com", now - 60, "1", "EURO", "X500"],
        65_000: ["c@example.com", now - 70 * DAY, "1", "EUR", "X65000"],
        80_000: ["", now - 60, "1", "EUR", "X80000"],
        99_999: ["d@example.com", now - 60, "1"],
    }
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows(100_000, "B", broken=broken))
    # The header is line 1: row i is on line i + 2.
    expected_errors = [
        "line 9: event_time is neither Unix seconds nor ISO 8601 (2026-11-30T14:05:00+01:00)",
        "line 502: custom_data currency must be an ISO 4217 code such as 'EUR'",
        "line 65002: event_time is more than 62 days old; Meta rejects it",
        (
            "line 80002: user_data cannot be matched to a person (it has only: none); "
            "add em, ph, external_id, fbp, fbc or client_ip_address"
        ),
        "line 100001: the row has 3 cells and the header 5",
    ]

    out, err = capi_import(path, "--event-name", "Purchase")

    assert out.strip() == "100000 rows read: 99995 written, 0 already imported, 5 invalid"
    assert [line for line in err.splitlines() if line.startswith("line ")] == expected_errors
    # Not a TTY: a plain line at each tenth of the file, then the end.
    progress = [line for line in err.splitlines() if "of the file" in line]
    assert [line.split("%")[0] for line in progress] == [
        "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"
    ]  # fmt: skip
    assert progress[-1] == "100% of the file, 100,000 rows"
    assert OutboxEvent.objects.count() == 99_995

    again, err_again = capi_import(path, "--event-name", "Purchase")
    assert again.strip() == "100000 rows read: 0 written, 99995 already imported, 5 invalid"
    assert [line for line in err_again.splitlines() if line.startswith("line ")] == expected_errors
    assert OutboxEvent.objects.count() == 99_995


@pytest.mark.once
def test_memory_stays_flat_however_long_the_file(tmp_path):
    """Ten times the rows in the same memory: rows stream through in batches. Small batches
    make many of them cheaply; tracemalloc counts every allocation, so the sizes stay small."""
    now = int(time.time())
    header = ["email", "event_time", "value", "currency", "order_id"]

    def peak(count: int, prefix: str) -> int:
        path = write_csv(
            tmp_path / f"{prefix}.csv",
            header,
            [[f"c{i}@example.com", now - 60 - i, "1", "EUR", f"{prefix}{i}"] for i in range(count)],
        )
        tracemalloc.start()
        try:
            out, _ = capi_import(path, "--event-name", "Purchase", "--batch-size", "100")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert out.startswith(f"{count} rows read: {count} written")

    peak(200, "warm")  # caches filled once per process (ContentType, statements, pycountry)
    small, large = peak(1_000, "s"), peak(10_000, "l")
    assert large < small * 1.3, (small, large)


def test_a_dry_run_reports_every_invalid_row_and_writes_nothing(tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "store.csv",
        ["email", "event_time", "value", "currency", "order_id"],
        [
            ["a@example.com", now - 60, "10", "USD", "1"],
            ["b@example.com", "", "10", "USD", "2"],
            ["c@example.com", now - 60, "ten", "USD", "3"],
            ["d@example.com", str(now * 1000), "10", "USD", "4"],
            ["e@example.com", now - 60, "10", "", "5"],
        ],
    )

    out, err = capi_import(path, "--event-name", "Purchase", "--dry-run")

    assert out.strip() == "5 rows read: 1 would write, 0 already imported, 4 invalid"
    assert [line for line in err.splitlines() if line.startswith("line ")] == [
        "line 3: event_time is empty (Meta requires the time of every event)",
        "line 4: custom_data value must be a number (or a numeric string)",
        "line 5: event_time is a number but not Unix seconds",
        "line 6: Purchase needs custom_data currency (Meta rejects it without)",
    ]
    assert not OutboxEvent.objects.exists()

    capi_import(path, "--event-name", "Purchase")
    out, _ = capi_import(path, "--event-name", "Purchase", "--dry-run")
    assert out.strip() == "5 rows read: 0 would write, 1 already imported, 4 invalid"
    assert OutboxEvent.objects.count() == 1


def test_rows_without_an_order_id_are_imported_once_and_a_changed_row_is_new(tmp_path):
    now = int(time.time())
    header = ["phone", "country", "event_time", "value", "currency"]
    row = ["(650) 555-0101", "US", now - 60, "3", "USD"]
    path = write_csv(tmp_path / "calls.csv", header, [row, row])
    args = ("--event-name", "Purchase", "--action-source", "phone_call")

    out, _ = capi_import(path, *args)
    # Two identical rows without an order id are the same sale, told twice.
    assert out.strip() == "2 rows read: 1 written, 1 already imported, 0 invalid"
    out, _ = capi_import(path, *args)
    assert out.strip() == "2 rows read: 0 written, 2 already imported, 0 invalid"

    write_csv(path, header, [row, [*row[:3], "4", "USD"]])
    out, _ = capi_import(path, *args)
    assert out.strip() == "2 rows read: 1 written, 1 already imported, 0 invalid"
    assert {event.action_source for event in OutboxEvent.objects.all()} == {"phone_call"}
    assert OutboxEvent.objects.count() == 2


def test_a_mapping_file_names_other_headers(tmp_path):
    now = int(time.time())
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps(
            {
                "E-Mail": "email",
                "Sold at": "event_time",
                "Total": "value",
                "Cur": "currency",
                "Receipt": "order_id",
                "Items": "custom_data.num_items",
                "Notes": None,
                "Loyalty card": "external_id",
            }
        )
    )
    path = write_csv(
        tmp_path / "pos.csv",
        ["Receipt", "E-Mail", "Sold at", "Total", "Cur", "Items", "Notes", "Loyalty card", "Till"],
        [["77", "x@example.com", now - 60, "8.5", "GBP", "2", "gift wrap", "L-9", "3"]],
    )

    out, err = capi_import(path, "--event-name", "Purchase", "--mapping", str(mapping))

    assert out.strip() == "1 rows read: 1 written, 0 already imported, 0 invalid"
    assert "Ignored columns: Till" in err
    event = OutboxEvent.objects.get()
    assert event.event_id == "offline-77"
    assert event.payload["custom_data"] == {
        "num_items": "2",
        "value": 8.5,
        "currency": "GBP",
        "order_id": "77",
    }
    assert event.payload["user_data"] == {
        "em": sha256("x@example.com"),
        "external_id": sha256("L-9"),  # hashed as written
    }


def test_a_bad_mapping_or_file_stops_before_anything_is_read(tmp_path):
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"Mail": "e-mail"}))
    path = write_csv(tmp_path / "a.csv", ["Mail"], [["a@example.com"]])
    with pytest.raises(CommandError, match="'Mail' maps to 'e-mail', which is not"):
        capi_import(path, "--mapping", str(mapping))
    with pytest.raises(CommandError, match="no column is one of Meta's offline template"):
        capi_import(path)
    with pytest.raises(CommandError, match="has no header row"):
        capi_import(write_csv(tmp_path / "empty.csv", [], []))
    with pytest.raises(CommandError, match="cannot read"):
        capi_import(tmp_path / "missing.csv")
    with pytest.raises(CommandError, match="no outbox in database nope"):
        capi_import(path, "--database", "nope")


def test_without_a_pixel_id_nothing_is_read(tmp_path, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "PIXEL_ID": ""}
    path = write_csv(tmp_path / "a.csv", ["email"], [["a@example.com"]])
    with pytest.raises(CommandError, match=r"PIXEL_ID.*is not set"):
        capi_import(path, "--dry-run")


def test_cells_that_are_not_utf8_or_not_csv_fail_their_row_only(tmp_path):
    now = int(time.time())
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"email,event_time,event_name\n"
        + f"ok@example.com,{now - 60},Lead\n".encode()
        + f"caf\xe9@example.com,{now - 60},Lead\n".encode("latin-1")
        + f"nul\x00@example.com,{now - 60},Lead\n".encode()
    )

    out, err = capi_import(path)

    assert out.strip() == "3 rows read: 1 written, 0 already imported, 2 invalid"
    assert [line for line in err.splitlines() if line.startswith("line ")] == [
        "line 3: a cell holds NUL or is not UTF-8 text (save the file as UTF-8)",
        "line 4: a cell holds NUL or is not UTF-8 text (save the file as UTF-8)",
    ]
    # No raw address of any row reached the database ("caf" alone shows up in hex digests).
    assert "example.com" not in dump_database()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1796000000", 1796000000),
        ("2026-11-30T14:05:00+01:00", 1796043900),
        ("2026-11-30T13:05:00Z", 1796043900),
        ("2026-11-30 13:05:00", 1796043900),  # no zone: UTC
    ],
)
def test_event_time_is_unix_seconds_or_iso_8601(text, expected):
    assert offline.parse_event_time(text).timestamp() == expected


@pytest.mark.parametrize("text", ["yesterday", "1796000000000", "-5", "nan", "30/11/2026"])
def test_other_event_times_are_refused(text):
    with pytest.raises(ValueError, match="event_time"):
        offline.parse_event_time(text)


def test_an_event_id_from_an_order_id_fits_the_column_and_is_stable():
    assert offline.derived_event_id("R-1", ["x"], "Purchase", "physical_store") == "offline-R-1"
    long_id = offline.derived_event_id("9" * 200, ["x"], "Purchase", "physical_store")
    assert long_id.startswith("offline-") and len(long_id) <= 100
    assert long_id == offline.derived_event_id("9" * 200, ["y"], "Lead", "other")
    # Without an order id the row's values, the event name and the action source decide.
    row = [("email", "a@example.com"), ("event_time", "1796000000")]
    first = offline.derived_event_id(None, row, "Purchase", "physical_store")
    assert first == offline.derived_event_id(None, row[::-1], "Purchase", "physical_store")
    assert first != offline.derived_event_id(None, row, "Purchase", "phone_call")
    assert first != offline.derived_event_id(
        None, [row[0], ("event_time", "1796000001")], "Purchase", "physical_store"
    )
    # A value is told apart from the column it is in.
    assert first != offline.derived_event_id(
        None, [("fn", "a@example.com"), row[1]], "Purchase", "physical_store"
    )


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_is_redrawn_in_place_and_errors_clear_it(tmp_path):
    now = int(time.time())
    rows = [[f"c{i}@example.com", now - 60, f"T{i}"] for i in range(600)]
    rows[550] = ["c@example.com", "soon", "T550"]
    path = write_csv(tmp_path / "t.csv", ["email", "event_time", "order_id"], rows)
    err = Terminal()
    call_command("capi_import", str(path), "--event-name", "Lead", stdout=StringIO(), stderr=err)
    output = err.getvalue()
    assert "\r[" in output and "] " in output  # the bar, redrawn after a carriage return
    assert "\r\x1b[K" in output  # cleared before the error line, which stays readable
    assert "line 552: event_time is neither Unix seconds nor ISO 8601" in output
    assert output.endswith("100% of the file, 600 rows\n")
    assert "of the file," not in output.replace("100% of the file, 600 rows", "")


def test_a_row_id_ignores_column_order_and_columns_that_are_left_out(tmp_path):
    """A re-export with the columns in another order, or with a column nobody imports, is the
    same sales: without order ids they must find the events of the first import."""
    now = int(time.time())
    rows = [[f"u{i}@example.com", now - 60, i + 1, "USD"] for i in range(3)]
    args = ("--event-name", "Purchase")
    path = write_csv(tmp_path / "a.csv", ["email", "event_time", "value", "currency"], rows)
    out, _ = capi_import(path, *args)
    assert out.strip() == "3 rows read: 3 written, 0 already imported, 0 invalid"

    reordered = [[row[3], row[2], row[1], row[0], "till 4"] for row in rows]
    header = ["currency", "value", "event_time", "email", "note"]
    out, _ = capi_import(write_csv(tmp_path / "b.csv", header, reordered), *args)
    assert out.strip() == "3 rows read: 0 written, 3 already imported, 0 invalid"
    # The same instant written as ISO 8601 is the same sale too.
    first = rows[0]
    iso = [[first[0], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)), *first[2:]]]
    path = write_csv(tmp_path / "c.csv", ["email", "event_time", "value", "currency"], iso)
    out, _ = capi_import(path, *args)
    assert out.strip() == "1 rows read: 0 written, 1 already imported, 0 invalid"
    assert OutboxEvent.objects.count() == 3


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 100_000, "the mapping file is not JSON: it is nested too deeply"),
        # One header, two targets: which one won would depend on the file's order.
        ('{"Email": "email", "EMAIL ": null}', "the mapping file names the header 'EMAIL ' twice"),
        (
            '{"Mail": "email", "Mail": "external_id"}',
            "the mapping file names the header 'Mail' twice",
        ),
    ],
)
def test_a_hostile_mapping_is_refused_saying_why(tmp_path, text, says):
    mapping = tmp_path / "mapping.json"
    mapping.write_text(text)
    path = write_csv(tmp_path / "a.csv", ["email"], [["a@example.com"]])
    with pytest.raises(CommandError, match=f"--mapping: {re.escape(says)}"):
        capi_import(path, "--mapping", str(mapping))


def test_an_unusable_event_name_option_stops_before_anything_is_read(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["email", "event_time"], [["a@example.com", "1"]] * 3)
    with pytest.raises(CommandError, match="--event-name: event_name is longer than 50"):
        capi_import(path, "--event-name", "P" * 51)


def test_a_quote_left_open_fails_its_row_instead_of_storing_the_rows_it_swallowed(tmp_path):
    now = int(time.time())
    path = tmp_path / "open.csv"
    path.write_text(
        f'email,event_time,order_id\nsecret@example.com,{now - 60},"R-1\n'
        f"b@example.com,{now - 60},R-2\nc@example.com,{now - 60},R-3\n"
    )
    out, err = capi_import(path, "--event-name", "Lead")
    # The rows after the quote were swallowed by its cell (which still makes three cells):
    # the order id, holding the next customers' addresses, is neither written nor quoted.
    assert out.strip() == "1 rows read: 0 written, 0 already imported, 1 invalid"
    assert "line 2: the order_id cell holds a line break (a quote left open?" in err
    assert "example.com" not in err + dump_database()


@pytest.mark.parametrize(
    ("action_source", "missing"),
    [("website", "event_source_url"), ("app", "app_data"), ("business_messaging", "channel")],
)
def test_a_source_no_csv_row_can_satisfy_is_refused_before_reading(
    tmp_path, action_source, missing
):
    # Meta requires of these what no column carries: every row of the file would fail alike.
    path = write_csv(tmp_path / "a.csv", ["email", "event_time"], [["a@example.com", "1"]] * 3)
    with pytest.raises(CommandError, match=f"--action-source {action_source}: .*{missing}"):
        capi_import(path, "--event-name", "Lead", "--action-source", action_source)


def test_a_utf16_file_is_named_as_such(tmp_path):
    # Excel's "Unicode text" export: without this, no header would be recognised.
    path = tmp_path / "unicode.csv"
    path.write_text("email,event_time\na@example.com,1\n", encoding="utf-16")
    with pytest.raises(CommandError, match="UTF-16: save it as CSV UTF-8"):
        capi_import(path, "--event-name", "Lead")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_file_separated_otherwise_than_by_commas_is_named_as_such(tmp_path, separator):
    # What Excel saves as "CSV" where the comma is the decimal separator (;), or as text (tab).
    path = tmp_path / "semicolons.csv"
    path.write_text(f"email{separator}event_time\na@example.com{separator}1\n")
    with pytest.raises(CommandError, match=re.escape(f"separated by {separator!r}, not commas")):
        capi_import(path, "--event-name", "Lead")
