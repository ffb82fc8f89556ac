"""`make demo-check`: `make demo`'s stack, driven without anyone at the keyboard.

It starts the shop, a Celery worker and beat (on kombu's filesystem broker) on free ports
with a fresh SQLite database in a temporary folder, and runs the Graph API emulator inside
this script, so it can break it and see everything it received. Then, in Debian's Chromium
(the test suite's, driven by Playwright): shoppers land from an ad (``?fbclid=…``), view a
product, add it to the cart and check out, paying by card or by bank transfer; the payment
provider's webhook pays the transfers during a window of 503s from "Meta"; visitors send the
contact form. Once the window is lifted it waits for the emulator to have everything,
prints a summary, and exits 0 only when every conversion arrived exactly once, each server
event has its Pixel twin with the same event_id, and every event was delivered.

    python example_project/demo_check.py [--shoppers 4] [--timeout 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import demo
import requests

ROOT = demo.HERE.parent
#: Stands in for Meta's fbevents.js and records every fbq call (the browser tests' own).
RECORDER = ROOT / "tests" / "browser" / "fbevents_recorder.js"
#: As tests/browser/conftest.py launches Debian's Chromium: no sandbox (root in CI) and no
#: background traffic on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ACCESS_TOKEN = "demo-token"  # noqa: S105 - the demo settings' fake token
MATCH_KEYS = ("fbc", "fbp", "client_ip_address", "client_user_agent")
#: Events the browser sees, each with its Pixel twin (PageView is the Pixel's alone).
TWINNED = ("ViewContent", "AddToCart", "InitiateCheckout", "Purchase", "Lead")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shopper:
    """One browser context on the shop; keeps the (event name, eventID) of its Pixel events."""

    def __init__(self, browser: Any, base_url: str, recorder: str) -> None:
        self.base_url = base_url
        self.recorder = recorder
        self.context = browser.new_context(base_url=base_url, locale="en-US")
        self.context.set_default_timeout(20_000)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.pixel: list[tuple[str, str]] = []
        self.blocked: list[str] = []
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _route(self, route: Any) -> None:
        url = urlsplit(route.request.url)
        if url.netloc == urlsplit(self.base_url).netloc:
            route.continue_()
        elif url.hostname == "connect.facebook.net":
            route.fulfill(status=200, content_type="application/javascript", body=self.recorder)
        elif url.hostname == "www.facebook.com":
            route.fulfill(status=204, body="")
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def goto(self, path: str) -> None:
        response = self.page.goto(path)
        if response is None or not response.ok:
            raise RuntimeError(f"GET {path}: {response and response.status}")
        self._settle()

    def click(self, locator: Any) -> None:
        with self.page.expect_navigation():
            locator.click()
        self._settle()

    def _settle(self) -> None:
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("() => window.__capiFbqReady === true")
        for call in self.page.evaluate("window.__capiFbqCalls"):
            if call[0] in ("track", "trackCustom") and call[1] != "PageView":
                self.pixel.append((call[1], call[3]["eventID"]))

    def buy(self, product: str, quantity: int, *, card: bool, who: dict[str, str]) -> int:
        page = self.page
        self.click(page.get_by_role("link", name=product))
        page.get_by_label("Quantity").fill(str(quantity))
        self.click(page.get_by_role("button", name="Add to cart"))
        self.click(page.get_by_role("link", name="Checkout"))
        for label, value in who.items():
            page.get_by_label(label).fill(value)
        self.click(page.get_by_role("button", name="Continue to payment"))
        page.get_by_label("Card" if card else "Bank transfer", exact=False).check()
        self.click(page.get_by_role("button", name="Pay now"))
        return int(urlsplit(page.url).path.strip("/").split("/")[1])

    def contact(self, first_name: str, email: str) -> None:
        page = self.page
        self.click(page.get_by_role("link", name="Contact"))
        page.get_by_label("First name").fill(first_name)
        page.get_by_label("Email").fill(email)
        page.get_by_label("Message").fill("Do you ship to Lisbon?")
        self.click(page.get_by_role("button", name="Send"))


def customer(n: int) -> dict[str, str]:
    return {
        "Email": f"Shopper.{n}@Example.com",
        "Phone": f"+1 650 555 01{n:02d}",
        "First name": ["Ada", "Grace", "Linus", "Barbara", "Ken"][n % 5],
        "Last name": "Demo",
        "Street": f"{n} Main Street",
        "City": "Menlo Park",
        "Postal code": "94025",
        "Country code": "US",
    }


def wait_until(condition: Any, timeout: float, what: str, stack: demo.Stack) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if stack.exited():
            raise RuntimeError(f"{', '.join(stack.exited())} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shoppers", type=int, default=4, help="browsers that buy (default 4)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for delivery")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("demo-check: chromium is not installed: run `make browser-deps`", file=sys.stderr)
        return 2
    var = Path(tempfile.mkdtemp(prefix="capi-demo-check-"))
    try:
        return run(args, chromium, var)
    finally:
        if args.keep:
            print(f"Logs and database kept in {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)


def run(args: argparse.Namespace, chromium: str, var: Path) -> int:
    from django_capi.testing import GraphEmulator
    from django_capi.testing.faults import HttpStatus

    emulator = GraphEmulator(access_tokens=[ACCESS_TOKEN]).start()
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (*demo.REAL_META_VARIABLES, "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env |= {
        "SHOP_VAR_DIR": str(var),
        "CAPI_GRAPH_API_URL": emulator.url,
        # A sweep every 2 s and retries within 1-2 s: the fault window heals in seconds.
        "SHOP_SWEEP_SECONDS": "2",
        "SHOP_RETRY_BASE_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # This process reads the shop's database for the summary.
    os.environ |= {k: env[k] for k in ("SHOP_VAR_DIR", "CAPI_GRAPH_API_URL")}
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    for name in (*demo.REAL_META_VARIABLES, "DATABASE_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()
    demo.prepare(env)
    stack = demo.Stack(env)
    started = time.monotonic()
    try:
        stack.start("celery-worker", demo.worker_command(), var / "celery-worker.log")
        stack.start("celery-beat", demo.beat_command(var), var / "celery-beat.log")
        stack.start("web", demo.web_command(port), var / "web.log")
        demo.wait_for_port(port, stack)
        report = drive(args, chromium, f"http://127.0.0.1:{port}", emulator, stack, HttpStatus)
    except Exception as exc:  # noqa: BLE001 - whatever broke, show why and the logs
        print(f"demo-check FAILED: {exc}", file=sys.stderr)
        for log in sorted(var.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-25:]), file=sys.stderr)
        return 1
    finally:
        stack.stop()
        emulator.stop()
    ok = summarize(report, emulator, time.monotonic() - started)
    return 0 if ok else 1


def drive(
    args: argparse.Namespace,
    chromium: str,
    base_url: str,
    emulator: Any,
    stack: demo.Stack,
    http_status: Any,
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    recorder = RECORDER.read_text()
    report: dict[str, Any] = {"orders": {}, "leads": 0, "shoppers": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            products = ["Organic T-shirt", "Enamel mug", "Canvas tote bag", "Wool beanie"]
            transfers: list[tuple[Shopper, int]] = []
            for n in range(args.shoppers):
                shopper = Shopper(browser, base_url, recorder)
                report["shoppers"].append(shopper)
                shopper.goto(f"/?fbclid=DemoCheckClick{n}")
                card = n % 2 == 0
                order = shopper.buy(products[n % 4], 1 + n % 3, card=card, who=customer(n))
                report["orders"][order] = "card" if card else "transfer"
                if not card:
                    transfers.append((shopper, order))
            # "Meta" answers 503 for a while: the webhook's Purchases and the leads hit it.
            emulator.fail_always(http_status(503, "<html>503 Service Unavailable</html>"))
            window = time.monotonic()
            for _, order in transfers:
                response = requests.post(f"{base_url}/payments/{order}/paid/", timeout=10)
                response.raise_for_status()
            for n in range(2):
                shopper = Shopper(browser, base_url, recorder)
                report["shoppers"].append(shopper)
                shopper.goto(f"/?fbclid=DemoCheckLead{n}")
                shopper.contact(customer(n + 10)["First name"], f"lead.{n}@example.com")
                report["leads"] += 1
            wait_until(
                lambda: any(r.status == 503 for r in emulator.requests),
                args.timeout,
                "a request inside the fault window",
                stack,
            )
            emulator.clear_faults()
            report["fault_window"] = time.monotonic() - window
            # The shoppers who paid by transfer come back: their Purchase's Pixel twin shows.
            for shopper, order in transfers:
                shopper.goto(f"/orders/{order}/")
            wait_until(lambda: _all_delivered(emulator), args.timeout, "every delivery", stack)
        finally:
            for shopper in report["shoppers"]:
                shopper.context.close()
            browser.close()
    return report


def _all_delivered(emulator: Any) -> bool:
    from django_capi import OutboxEvent

    rows = OutboxEvent.objects.values_list("event_id", "status")
    received = set(emulator.event_ids())
    return all(status == "delivered" and event_id in received for event_id, status in rows)


def summarize(report: dict[str, Any], emulator: Any, seconds: float) -> bool:
    from django_capi import OutboxEvent
    from shop.models import Lead, Order

    rows = list(OutboxEvent.objects.order_by("pk"))
    problems: list[str] = []
    print(
        f"\ndemo-check: {len(report['orders'])} orders, {report['leads']} leads in {seconds:.0f} s"
    )

    print("\nEvents by status")
    by_status: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        by_status[row.event_name][row.status] += 1
    for name, counts in sorted(by_status.items()):
        print(f"  {name:<17} " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    problems += [
        f"{row.event_name} {row.event_id} is {row.status}"
        for row in rows
        if row.status != "delivered"
    ]

    failed = [r for r in emulator.requests if r.status == 503]
    print(
        f"\nFault window: {report['fault_window']:.1f} s of 503s, {len(failed)} request(s) "
        f"refused, {sum(r.attempts > 1 for r in rows)} event(s) delivered on a retry"
    )

    received = Counter((e.event_name, e.event_id) for e in emulator.received_events())
    server = Counter((row.event_name, row.event_id) for row in rows)
    twice = [key for key, n in received.items() if n > 1]
    unknown = [key for key in received if key not in server]
    missing = [key for key in server if key not in received]
    print(
        f"\nAt the emulator: {sum(received.values())} events, {len(twice)} received more than "
        f"once, {len(missing)} missing, {len(unknown)} not from the outbox"
    )
    problems += [f"{k} arrived {received[k]} times" for k in twice]
    problems += [f"{k} never arrived" for k in missing]
    problems += [f"{k} arrived but is not in the outbox" for k in unknown]

    orders = Order.objects.all()
    purchases = {row.source_id for row in rows if row.event_name == "Purchase"}
    if {str(order.pk) for order in orders if order.status == "paid"} != purchases or len(
        purchases
    ) != len(report["orders"]):
        problems.append(f"{len(report['orders'])} orders paid, {len(purchases)} Purchases")
    if Lead.objects.count() != report["leads"] or server_names(rows)["Lead"] != report["leads"]:
        problems.append(f"{report['leads']} contact forms sent, {server_names(rows)['Lead']} Leads")

    pixel = Counter(pair for shopper in report["shoppers"] for pair in shopper.pixel)
    twinned = {(row.event_name, row.event_id) for row in rows if row.event_name in TWINNED}
    matched = twinned & set(pixel)
    print(
        f"\nPixel/server event_id pairs: {len(matched)} of {len(twinned)} server events have "
        f"their Pixel twin; {len(set(pixel) - twinned)} Pixel events without a server twin"
    )
    problems += [f"{pair} has no Pixel twin" for pair in sorted(twinned - matched)]
    problems += [
        f"the Pixel sent {pair} the server never recorded" for pair in set(pixel) - twinned
    ]
    for shopper in report["shoppers"]:
        problems += [f"a page tried to reach {url}" for url in shopper.blocked]
        problems += [f"JavaScript error: {error}" for error in shopper.page_errors]

    print("\nMatch keys received (share of events)")
    first = emulator.received_events(include_duplicates=False)
    by_name: dict[str, list[Any]] = defaultdict(list)
    for event in first:
        by_name[event.event_name].append(event.data.get("user_data", {}))
    print(f"  {'event':<17} " + " ".join(f"{key:>17}" for key in MATCH_KEYS))
    for name, users in sorted(by_name.items()):
        shares = [sum(bool(u.get(key)) for u in users) / len(users) for key in MATCH_KEYS]
        print(f"  {name:<17} " + " ".join(f"{share:>16.0%} " for share in shares))
        problems += [
            f"{name}: only {share:.0%} carry {key}"
            for key, share in zip(MATCH_KEYS, shares, strict=True)
            if share < 1
        ]

    delays = [
        (row.delivered_at - row.created_at).total_seconds()
        for row in rows
        if row.event_name == "Purchase" and row.delivered_at
    ]
    if delays:
        print(
            f"\nPurchase recorded → delivered: median {statistics.median(delays):.1f} s, "
            f"fastest {min(delays):.1f} s, slowest {max(delays):.1f} s (the fault window's "
            "included)"
        )
    if problems:
        print("\nFAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return False
    print("\nOK: every conversion arrived exactly once, with its Pixel twin.")
    return True


def server_names(rows: list[Any]) -> Counter[str]:
    return Counter(row.event_name for row in rows)


if __name__ == "__main__":
    # Read the database this script's shop writes, from the thread Playwright also runs in.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    sys.exit(main())
