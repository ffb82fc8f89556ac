"""`make demo-check`: `make demo`'s stack, driven without anyone at the keyboard.

It starts what `make demo` starts, on free ports with a fresh SQLite database in a temporary
folder: the Graph API emulator (`manage.py capi_fakegraph`), a Celery worker and beat (on
kombu's filesystem broker) and the shop, each in a process group of its own, all stopped at
the end. Then, in Debian's Chromium (the test suite's, driven by Playwright): shoppers land
from an ad (``?fbclid=…``), view a product, add it to the cart and check out, paying by card
or by bank transfer; a fault window is opened through the emulator's control endpoint
(``POST /_faults``: every request answered HTTP 500) while the payment provider's webhook pays
the transfers and visitors send the contact form, then lifted (``DELETE /_faults``). It waits
until the emulator has everything (``GET /_received``), prints a summary, and exits 0 only
when every conversion arrived exactly once, each server event has its Pixel twin with the
same event_id, and every event was delivered.

    python example_project/demo_check.py [--shoppers 4] [--timeout 60]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
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
from chromium import CHROMIUM_ARGS

from django_capi.testing.emulator import FAULTS_PATH, RECEIVED_PATH

ROOT = demo.HERE.parent
#: Stands in for Meta's fbevents.js and records every fbq call (the browser tests' own).
RECORDER = ROOT / "tests" / "browser" / "fbevents_recorder.js"
#: How the emulator answers a request its ``fail_rate`` fails: HTTP 500, Graph's code 2.
FAULT_STATUS = 500
#: ``capi_fakegraph``'s first line names the URL it listens on.
LISTENING = re.compile(r"Graph API emulator listening on (http://\S+)")
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
    # SIGTERM unwinds like Ctrl-C, so every process group started is stopped either way.
    signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args, chromium, var)
    except KeyboardInterrupt:
        print("demo-check interrupted: the stack is stopped.", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"Logs and database kept in {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, chromium: str, var: Path) -> int:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (*demo.REAL_META_VARIABLES, "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env |= {
        "SHOP_VAR_DIR": str(var),
        # A sweep every 2 s and retries within 1-2 s: the fault window heals in seconds.
        "SHOP_SWEEP_SECONDS": "2",
        "SHOP_RETRY_BASE_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    demo.prepare(env)
    stack = demo.Stack(env)  # holds env itself: the emulator's URL added below reaches the rest
    started = time.monotonic()
    try:
        graph_log = var / "graph-emulator.log"
        stack.start("graph-emulator", demo.graph_command(0), graph_log)
        graph = Emulator(wait_for_emulator(graph_log, stack))
        pid = stack.processes["graph-emulator"].pid
        print(f"Graph API emulator: capi_fakegraph on {graph.url} (pid {pid})", flush=True)
        env["CAPI_GRAPH_API_URL"] = graph.url
        setup_django(env)
        stack.start("celery-worker", demo.worker_command(), var / "celery-worker.log")
        stack.start("celery-beat", demo.beat_command(var), var / "celery-beat.log")
        stack.start("web", demo.web_command(port), var / "web.log")
        demo.wait_for_port(port, stack)
        report = drive(args, chromium, f"http://127.0.0.1:{port}", graph, stack)
        # Read before the stack stops: the emulator keeps what it received in memory.
        received = graph.received()
    except Exception as exc:  # noqa: BLE001 - whatever broke, show why and the logs
        print(f"demo-check FAILED: {exc}", file=sys.stderr)
        for log in sorted(var.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-25:]), file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stopping short and orphan a group.
        previous = (
            signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.signal(signal.SIGTERM, signal.SIG_IGN),
        )
        stack.stop()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    ok = summarize(report, received, time.monotonic() - started)
    return 0 if ok else 1


def setup_django(env: dict[str, str]) -> None:
    """This process reads the shop's database for the summary, with the stack's settings."""
    os.environ |= {k: env[k] for k in ("SHOP_VAR_DIR", "CAPI_GRAPH_API_URL")}
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    for name in (*demo.REAL_META_VARIABLES, "DATABASE_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()


def wait_for_emulator(log: Path, stack: demo.Stack, timeout: float = 60) -> str:
    """The URL ``capi_fakegraph --port 0`` says it listens on: the port is its own pick, so
    no other process can take it between choosing and binding."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.exited():
            raise RuntimeError(f"{', '.join(stack.exited())} exited during start-up")
        if match := LISTENING.search(log.read_text(errors="replace")):
            return match[1]
        time.sleep(0.1)
    raise RuntimeError(f"capi_fakegraph did not say where it listens after {timeout:.0f} s")


class Emulator:
    """The running ``capi_fakegraph``, through its own HTTP endpoints (docs/emulator.md)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.session.request(method, f"{self.url}{path}", json=body, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json()

    def open_faults(self, **fields: Any) -> dict[str, Any]:
        state: dict[str, Any] = self._call("POST", FAULTS_PATH, fields)
        return state

    def lift_faults(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("DELETE", FAULTS_PATH)
        return state

    def received(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("GET", RECEIVED_PATH)
        return state

    def refused(self) -> int:
        """Graph requests the fault window answered (HTTP 500, Graph's transient code 2)."""
        return sum(r["status"] == FAULT_STATUS for r in self.received()["requests"])


def drive(
    args: argparse.Namespace,
    chromium: str,
    base_url: str,
    graph: Emulator,
    stack: demo.Stack,
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    recorder = RECORDER.read_text()
    report: dict[str, Any] = {"orders": {}, "leads": 0, "shoppers": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS), timeout=60_000
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
            # "Meta" fails every request for a while: the webhook's Purchases and the leads hit
            # it. for_seconds only guards against this script dying with the window open.
            opened = graph.open_faults(fail_rate=1, for_seconds=args.timeout * 2)
            window = time.monotonic()
            report["faults"] = [f"POST {FAULTS_PATH}: {opened['describe']}"]
            for _, order in transfers:
                response = requests.post(f"{base_url}/payments/{order}/paid/", timeout=10)
                response.raise_for_status()
            for n in range(2):
                shopper = Shopper(browser, base_url, recorder)
                report["shoppers"].append(shopper)
                shopper.goto(f"/?fbclid=DemoCheckLead{n}")
                shopper.contact(customer(n + 10)["First name"], f"lead.{n}@example.com")
                report["leads"] += 1
            wait_until(lambda: graph.refused() > 0, args.timeout, "a refused request", stack)
            lifted = graph.lift_faults()
            report["fault_window"] = time.monotonic() - window
            report["faults"].append(f"DELETE {FAULTS_PATH}: {lifted['describe']}")
            if lifted["window"]:
                raise RuntimeError(f"DELETE {FAULTS_PATH} left the window open: {lifted}")
            # The shoppers who paid by transfer come back: their Purchase's Pixel twin shows.
            for shopper, order in transfers:
                shopper.goto(f"/orders/{order}/")
            wait_until(lambda: _all_delivered(graph), args.timeout, "every delivery", stack)
        finally:
            for shopper in report["shoppers"]:
                shopper.context.close()
            browser.close()
    return report


def _all_delivered(graph: Emulator) -> bool:
    from django_capi import OutboxEvent

    rows = OutboxEvent.objects.values_list("event_id", "status")
    received = {event["event_id"] for event in graph.received()["events"]}
    return all(status == "delivered" and event_id in received for event_id, status in rows)


def summarize(report: dict[str, Any], received_state: dict[str, Any], seconds: float) -> bool:
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

    failed = [r for r in received_state["requests"] if r["status"] == FAULT_STATUS]
    print(
        f"\nFault window: {report['fault_window']:.1f} s of HTTP {FAULT_STATUS}s, "
        f"{len(failed)} request(s) refused, {sum(r.attempts > 1 for r in rows)} event(s) "
        "delivered on a retry"
    )
    for change in report["faults"]:
        print(f"  {change}")

    events = received_state["events"]
    received = Counter((e["event_name"], e["event_id"]) for e in events)
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
    by_name: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        if not event["duplicate"]:
            by_name[event["event_name"]].append(event["data"].get("user_data", {}))
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
