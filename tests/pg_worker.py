"""A separate process for the PostgreSQL concurrency tests: ``python -m tests.pg_worker …``.

It connects to the database named by ``DATABASE_URL`` (the test database), waits for a go
file if asked, does its work in one transaction, announces it with a ready file, and holds the
transaction open for a while so that the other process runs into it.
"""

import argparse
import os
import time
from pathlib import Path

import django


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["pay-order", "send-event"])
    parser.add_argument("key", help="the order's pk, or the event_id to send")
    parser.add_argument("--wait-for", type=Path)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--hold", type=float, default=0)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import transaction

    from django_capi import send_event
    from tests.shop.models import Order

    if args.wait_for:
        wait_for(args.wait_for)
    with transaction.atomic():
        if args.action == "pay-order":
            order = Order.objects.get(pk=args.key)
            order.status = "paid"
            order.save()
        else:
            row = send_event(
                "Lead", event_id=args.key, user_data={"em": "a@b.co"}, action_source="chat"
            )
            print(row.pk, flush=True)
        args.ready.touch()
        time.sleep(args.hold)


if __name__ == "__main__":
    main()
