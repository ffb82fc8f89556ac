"""``manage.py capi_fakegraph``: the Graph emulator as a standalone server for manual testing,
with standing faults set by options at start and by ``POST /_faults`` while it runs."""

from __future__ import annotations

import argparse
import math
import signal
import threading
import time
from types import FrameType
from typing import Any

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)

from django_capi.conf import capi_settings
from django_capi.exceptions import CapiConfigurationError
from django_capi.testing.emulator import (
    DEFAULT_ACCESS_TOKEN,
    FAULTS_PATH,
    RECEIVED_PATH,
    GraphEmulator,
    RecordedRequest,
)
from django_capi.testing.faults import Conditions


class _Stop(Exception):
    """Raised by the SIGTERM handler so that it unwinds like Ctrl-C."""


CONTROL_HELP = f"""
Faults at runtime, without a restart: {FAULTS_PATH} on the emulator's own port.
  GET    {FAULTS_PATH}  the faults in force, as JSON
  POST   {FAULTS_PATH}  a fault window: a JSON object of latency_ms, fail_rate, timeout_rate,
                   timeout_seconds, rate_limit_rate, token_invalid, reject_event_names,
                   reject_rate (fields left out keep their value from the options), and
                   for_seconds to end it by itself
  DELETE {FAULTS_PATH}  lift the window: the options' faults apply again
For example:
  curl -X POST -d '{{"fail_rate": 1, "for_seconds": 30}}' http://127.0.0.1:8111{FAULTS_PATH}
What it received, read-only (never recorded as a request):
  GET    {RECEIVED_PATH}  the events, duplicates flagged, and each request's status and
                     error, as JSON
"""


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, not {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative: {text}")
    return value


class Command(BaseCommand):
    help = (
        "Run a local emulator of Meta's Conversions API endpoint (POST /{version}/{pixel}/events) "
        "that validates events like Meta and logs each request; the options make it fail on "
        "purpose (latency, 5xx, timeouts, rate limits, a refused token, rejected events), and "
        f"{FAULTS_PATH} changes that while it runs."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.epilog = CONTROL_HELP
        # Django's formatter would fold the epilog's lines into one paragraph.
        parser.formatter_class = _KeepEpilog
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8111, help="Port (default 8111).")
        parser.add_argument(
            "--token",
            action="append",
            dest="tokens",
            help="Access token to accept; repeat for several. Default: DJANGO_CAPI's "
            f"ACCESS_TOKEN, else {DEFAULT_ACCESS_TOKEN!r}.",
        )
        faults = parser.add_argument_group("faults (all off by default)")
        faults.add_argument(
            "--latency-ms",
            type=_seconds,
            default=0.0,
            help="Answer every request this many milliseconds late.",
        )
        faults.add_argument(
            "--fail-rate",
            type=_rate,
            default=0.0,
            help="Share of requests (0 to 1) answered with HTTP 500, Graph's transient code 2: "
            "nothing received, the sender retries.",
        )
        faults.add_argument(
            "--timeout-rate",
            type=_rate,
            default=0.0,
            help="Share of requests (0 to 1) left unanswered for --timeout-seconds, then "
            "answered 504: the sender times out and retries; nothing received.",
        )
        faults.add_argument(
            "--timeout-seconds",
            type=_seconds,
            default=60.0,
            help="How long a --timeout-rate request hangs (default 60, past the sender's "
            "READ_TIMEOUT).",
        )
        faults.add_argument(
            "--rate-limit-rate",
            type=_rate,
            default=0.0,
            help="Share of requests (0 to 1) answered with Graph's rate-limit error (code 613, "
            "access back in 1 minute): the sender pauses the pixel.",
        )
        faults.add_argument(
            "--token-invalid-for",
            type=_seconds,
            default=0.0,
            metavar="SECONDS",
            help="Refuse the token (code 190/463, expired) for this many seconds from the "
            "start: the pixel's circuit opens, and closes on the first probe after.",
        )
        faults.add_argument(
            "--reject-event-name",
            action="append",
            dest="reject_event_names",
            metavar="EVENT_NAME",
            help="Reject events of this name as Meta rejects an invalid event (code 100, the "
            "whole request); repeat for several. The sender isolates and fails them.",
        )
        faults.add_argument(
            "--reject-rate",
            type=_rate,
            default=None,
            help="Share of the --reject-event-name events (of all events without it) that are "
            "rejected, chosen by event_id (default 1 with a name).",
        )
        faults.add_argument(
            "--seed",
            type=int,
            default=None,
            help="Seed for the rates' dice, to replay the same run.",
        )
        parser.add_argument(
            "--app-secret",
            help="Require appsecret_proof made with this app secret, as an app with "
            '"Require App Secret" does (default: proofs are not checked).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tokens, source = self._tokens(options["tokens"])
        conditions = _conditions(options)
        lock = threading.Lock()

        def log(record: RecordedRequest) -> None:
            with lock:
                self.stdout.write(describe_request(record))
                self.stdout.flush()

        def log_faults(description: str) -> None:
            with lock:
                stamp = time.strftime("%H:%M:%S")
                self.stdout.write(f"[{stamp}] faults now: {description}")
                self.stdout.flush()

        emulator = GraphEmulator(
            access_tokens=tokens,
            host=options["host"],
            port=options["port"],
            on_request=log,
            conditions=conditions,
            seed=options["seed"],
            on_faults=log_faults,
            app_secret=options["app_secret"],
        )
        if options["token_invalid_for"]:
            emulator.open_window(
                Conditions.from_json({"token_invalid": True}, conditions),
                options["token_invalid_for"],
            )
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            emulator.start()
            self.stdout.write(f"Graph API emulator listening on {emulator.url}")
            self.stdout.write(f"Accepting {source}.")
            self.stdout.write(f"Faults: {conditions.describe()}.")
            if options["token_invalid_for"]:
                self.stdout.write(
                    f"The token is refused for the first {options['token_invalid_for']:g} s."
                )
            self.stdout.write(
                f"Change them while it runs: POST/DELETE {emulator.url}{FAULTS_PATH} "
                "(capi_fakegraph --help)."
            )
            self.stdout.write(f"Point django-capi at it:  export CAPI_GRAPH_API_URL={emulator.url}")
            self.stdout.write("Quit with CONTROL-C.")
            self.stdout.flush()
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            emulator.stop()
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write("Graph API emulator stopped.")

    def _tokens(self, given: list[str] | None) -> tuple[list[str], str]:
        if given:
            return given, f"{len(given)} access token(s) from --token"
        try:
            conf = capi_settings()
        except CapiConfigurationError:
            conf = None
        configured = [] if conf is None else [conf.access_token]
        if conf is not None:
            configured += [pixel.access_token for pixel in conf.pixels.values()]
        tokens = [token for token in dict.fromkeys(configured) if token]
        if tokens:
            # Never printed: they may be real tokens.
            return tokens, f"the {len(tokens)} access token(s) configured in DJANGO_CAPI"
        return [DEFAULT_ACCESS_TOKEN], (
            f"the access token {DEFAULT_ACCESS_TOKEN!r} "
            f"(export CAPI_ACCESS_TOKEN={DEFAULT_ACCESS_TOKEN})"
        )


class _KeepEpilog(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; options are wrapped as usual."""


def _conditions(options: dict[str, Any]) -> Conditions:
    names = frozenset(options["reject_event_names"] or ())
    reject_rate = options["reject_rate"]
    if reject_rate is None:
        reject_rate = 1.0 if names else 0.0
    try:
        return Conditions(
            latency_ms=options["latency_ms"],
            fail_rate=options["fail_rate"],
            timeout_rate=options["timeout_rate"],
            timeout_seconds=options["timeout_seconds"],
            rate_limit_rate=options["rate_limit_rate"],
            reject_event_names=names,
            reject_rate=reject_rate,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def describe_request(record: RecordedRequest) -> str:
    """One log line; built from the redacted record, so it never holds the token."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.time))
    where = f"{record.method} {record.path}"
    if record.pixel_id:
        where += f" pixel={record.pixel_id}"
    if record.status is None:
        return f"[{stamp}] RESET {where} (connection reset by script)"
    line = f"[{stamp}] {record.status} {where}"
    error = record.error
    if record.token_check and error is not None and error.get("code") == 100:
        # Meta's answer to no events; the token and the pixel passed (capi_doctor).
        return f"[{stamp}] token check {where}: token and pixel accepted (no events sent)"
    if error is not None:
        subcode = f"/{error['error_subcode']}" if "error_subcode" in error else ""
        detail = error.get("error_user_msg") or error.get("message")
        return f"{line} error {error.get('code')}{subcode}: {detail}"
    if isinstance(record.response, dict) and "events_received" in record.response:
        line += f" events_received={record.response['events_received']}"
        test_code = record.params.get("test_event_code")
        if test_code:
            line += f" test_event_code={test_code}"
    return line
