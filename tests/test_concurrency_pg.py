"""Two processes recording the same event at once still make one row (PostgreSQL, MariaDB)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from django_capi import OutboxEvent
from tests.factories import OrderFactory
from tests.processes import database_url

pytestmark = [pytest.mark.rowlocks, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pg_worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def test_two_processes_paying_the_same_order_make_one_purchase(tmp_path):
    order = OrderFactory()
    first_saved = tmp_path / "first"
    first = start(tmp_path, "pay-order", str(order.pk), "--ready", str(first_saved), "--hold", "1")
    second = start(
        tmp_path,
        "pay-order",
        str(order.pk),
        "--wait-for",
        str(first_saved),
        "--ready",
        str(tmp_path / "second"),
    )
    finish(first)
    finish(second)
    assert OutboxEvent.objects.filter(event_name="Purchase").count() == 1
    assert OutboxEvent.objects.get().source == order


def test_a_concurrent_duplicate_insert_is_absorbed_by_the_unique_constraint(tmp_path):
    # The second process looks for the row while the first one's INSERT is not yet
    # committed, so only the unique constraint can stop a second row.
    first_inserted = tmp_path / "first"
    first = start(tmp_path, "send-event", "crm-42", "--ready", str(first_inserted), "--hold", "1")
    second = start(
        tmp_path,
        "send-event",
        "crm-42",
        "--wait-for",
        str(first_inserted),
        "--ready",
        str(tmp_path / "second"),
    )
    first_pk, second_pk = finish(first).strip(), finish(second).strip()
    assert first_pk == second_pk == str(OutboxEvent.objects.get(event_id="crm-42").pk)
