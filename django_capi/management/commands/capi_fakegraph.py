"""``manage.py capi_fakegraph``: the Graph emulator as a standalone server for manual testing."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_capi.conf import capi_settings
from django_capi.exceptions import CapiConfigurationError
from django_capi.testing.emulator import DEFAULT_ACCESS_TOKEN, GraphEmulator, RecordedRequest


class _Stop(Exception):
    """Raised by the SIGTERM handler so that it unwinds like Ctrl-C."""


class Command(BaseCommand):
    help = (
        "Run a local emulator of Meta's Conversions API endpoint (POST /{version}/{pixel}/events) "
        "that validates events like Meta and logs each request."
    )

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
        parser.add_argument(
            "--app-secret",
            help="Require appsecret_proof made with this app secret, as an app with "
            '"Require App Secret" does (default: proofs are not checked).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tokens, source = self._tokens(options["tokens"])
        lock = threading.Lock()

        def log(record: RecordedRequest) -> None:
            with lock:
                self.stdout.write(_describe(record))
                self.stdout.flush()

        emulator = GraphEmulator(
            access_tokens=tokens,
            host=options["host"],
            port=options["port"],
            on_request=log,
            app_secret=options["app_secret"],
        )
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            emulator.start()
            self.stdout.write(f"Graph API emulator listening on {emulator.url}")
            self.stdout.write(f"Accepting {source}.")
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


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _describe(record: RecordedRequest) -> str:
    """One log line; built from the redacted record, so it never holds the token."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.time))
    where = f"{record.method} {record.path}"
    if record.pixel_id:
        where += f" pixel={record.pixel_id}"
    if record.status is None:
        return f"[{stamp}] RESET {where} (connection reset by script)"
    line = f"[{stamp}] {record.status} {where}"
    error = record.error
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
