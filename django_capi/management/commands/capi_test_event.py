"""``manage.py capi_test_event``: send one event with a test code and print Meta's answer.

It talks to the Graph API directly and never touches the outbox, so it works before
migrations and leaves nothing to deliver or count. Meta shows the event under Events Manager,
Test Events, for the code given. With several pixels, each gets its own event with its own
token and test code, one line each.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_capi.client import GraphClient, graph_failure_fix
from django_capi.conf import SETTING_NAME, CapiSettings, PixelSettings, capi_settings
from django_capi.events import EventDraft, build_event
from django_capi.exceptions import CapiConfigurationError, EventValidationError


class Command(BaseCommand):
    help = (
        "Send one test event to Meta with TEST_EVENT_CODE (or --code) and print Meta's answer. "
        "The outbox is not touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--code",
            help="The test code from Events Manager, Test Events (default: TEST_EVENT_CODE).",
        )
        parser.add_argument(
            "--event-name",
            choices=["PageView", "Lead"],
            default="PageView",
            help="The event to send (default: PageView).",
        )
        parser.add_argument(
            "--url",
            help="Send a website event from this page URL (needs --user-agent); otherwise the "
            "event is system_generated.",
        )
        parser.add_argument("--user-agent", help="The browser user agent of a website event.")
        parser.add_argument(
            "--pixel",
            action="append",
            help="Send to this pixel only (repeatable). Default: every configured pixel, each "
            "with its own TEST_EVENT_CODE (--code replaces them all).",
        )
        parser.add_argument(
            "--external-id",
            default="capi-test-event",
            help="The (hashed) external_id Meta matches the event on. Default: capi-test-event.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            conf = capi_settings()
        except CapiConfigurationError as exc:
            raise CommandError(str(exc)) from None
        pixels = self._pixels(conf, options["pixel"])
        codes = {pixel.pixel_id: options["code"] or pixel.test_event_code for pixel in pixels}
        if not any(codes.values()):
            raise CommandError(
                f"No test event code: pass --code (from Events Manager, Test Events) or set "
                f"{SETTING_NAME}['TEST_EVENT_CODE']. Without one this would be a real event."
            )
        url, user_agent = options["url"], options["user_agent"]
        if bool(url) != bool(user_agent):
            raise CommandError("A website test event needs both --url and --user-agent.")
        draft = EventDraft(
            event_name=options["event_name"],
            event_id="capi-test-event",  # replaced per pixel below
            action_source="website" if url else "system_generated",
            user_data={"external_id": options["external_id"]},
            event_source_url=url,
            browser={"client_user_agent": user_agent} if user_agent else {},
            limited_data_use=conf.limited_data_use,
        )
        try:
            payload = build_event(draft, default_phone_region=conf.default_phone_region).payload
        except EventValidationError as exc:
            raise CommandError(f"The test event is invalid: {exc}") from None
        refusals = []
        for pixel in pixels:
            code = codes[pixel.pixel_id]
            if not code:
                # Never a real event by mistake: a pixel without a code is left alone.
                self.stdout.write(
                    f"Pixel {pixel.pixel_id}: skipped, no test event code (set its "
                    f"TEST_EVENT_CODE in {SETTING_NAME}['PIXELS'], or pass --pixel "
                    f"{pixel.pixel_id} --code …)."
                )
                continue
            refusal = self._send(conf.with_test_event_code(code), pixel, code, draft, payload)
            if refusal:
                refusals.append(refusal)
        if refusals:
            raise CommandError("\n".join(refusals))

    def _pixels(self, conf: CapiSettings, chosen: list[str] | None) -> list[PixelSettings]:
        """The pixels to test: those named by --pixel, else every configured one."""
        if not chosen:
            if conf.pixel_id is None and not conf.pixels:
                raise CommandError(f"No pixel id: set {SETTING_NAME}['PIXEL_ID'] or CAPI_PIXEL_ID.")
            return list(conf.pixels.values())
        unknown = [pixel_id for pixel_id in chosen if conf.pixel(pixel_id) is None]
        if unknown:
            raise CommandError(
                f"Pixel(s) {', '.join(unknown)} are not configured: configured are "
                f"{', '.join(conf.pixels) or 'none'}."
            )
        return [conf.credentials(pixel_id) for pixel_id in dict.fromkeys(chosen)]

    def _send(
        self,
        conf: CapiSettings,
        pixel: PixelSettings,
        code: str,
        draft: EventDraft,
        payload: dict[str, Any],
    ) -> str:
        """Send the test event to ``pixel``; print what happened; return the refusal, if any."""
        if pixel.access_token is None:
            return (
                f"No access token for pixel {pixel.pixel_id}: set CAPI_ACCESS_TOKEN or "
                f"{SETTING_NAME}['ACCESS_TOKEN'] (or its ACCESS_TOKEN in PIXELS)."
            )
        # Unique per run: Meta would deduplicate a second test with the same event_id.
        event_id = f"capi-test-event-{uuid.uuid4().hex}"
        client = GraphClient(conf)
        try:
            result = client.post_events(pixel.pixel_id, [{**payload, "event_id": event_id}])
        finally:
            client.close()
        self.stdout.write(
            f"Sent one {draft.event_name} ({draft.action_source}) to pixel {pixel.pixel_id} "
            f"with test code {code}, event_id {event_id}."
        )
        if result.error is not None:
            return (
                f"Meta refused the test event for pixel {pixel.pixel_id}: "
                f"{result.error.describe(result.http_status)}\n"
                f"Fix: {graph_failure_fix(result.error, result.http_status, pixel.pixel_id)}"
                + (f"\nfbtrace_id: {result.fbtrace_id}" if result.fbtrace_id else "")
            )
        self.stdout.write(
            f"Meta answered HTTP {result.http_status}: events_received={result.events_received}, "
            f"fbtrace_id={result.fbtrace_id or '-'} ({result.duration_ms} ms)."
        )
        self.stdout.write(f"Look for it in Events Manager, Test Events, under the code {code}.")
        return ""
