"""No raw email reaches the outbox through a URL: ``context.scrub_url`` on the page, the
referrer and every URL an event is built with."""

from __future__ import annotations

import json

import pytest
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory

from django_capi import OutboxEvent, send_event
from django_capi.browser import browser_context
from django_capi.context import scrub_url, use_browser_context
from django_capi.middleware import CapiMiddleware

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"


@pytest.mark.parametrize(
    ("url", "scrubbed"),
    [
        # Emails in the path, plain, percent-encoded, encoded twice, with a + tag.
        (
            "https://shop.example/confirm/john@example.com/",
            "https://shop.example/confirm/redacted/",
        ),
        ("https://shop.example/c/john%40example.com/", "https://shop.example/c/redacted/"),
        ("https://shop.example/c/JOHN%2540Example.COM", "https://shop.example/c/redacted"),
        ("https://shop.example/u/ann.lee+news@mail.co.uk", "https://shop.example/u/redacted"),
        ("https://shop.example/u/j\u00f6rg@b\u00fccher.de/x", "https://shop.example/u/redacted/x"),
        # In query values and fragments, whatever the parameter's name.
        ("https://s.example/?q=john%40example.com&page=2", "https://s.example/?q=redacted&page=2"),
        (
            "https://s.example/a?next=%2Fconfirm%2Fjohn%40x.com",
            "https://s.example/a?next=redacted",
        ),
        ("https://s.example/#/thanks/john@example.com", "https://s.example/#/thanks/redacted"),
        ("https://s.example/#email=john@example.com", "https://s.example/#email=redacted"),
        # Parameters that usually carry personal data go, name and value.
        (
            "https://s.example/p?email=x&utm_source=news&fbclid=AbC&E-Mail=y&customer%5Bemail%5D=z",
            "https://s.example/p?utm_source=news&fbclid=AbC",
        ),
        (
            (
                "https://s.example/p?em=1&ph=2&phone=3&mobilePhone=4&user_email=5&username=6"
                "&login=7&first_name=8&LastName=9&zip=0&dob=1&password=2&id=42"
            ),
            "https://s.example/p?id=42",
        ),
        # Credentials in the authority go; the host stays.
        ("https://john:secret@shop.example:8443/a", "https://shop.example:8443/a"),
        ("mailto:john@example.com", "mailto:redacted"),
        # Malformed addresses are still someone's: no domain, no local part, two "@"s.
        ("https://s.example/c/john.smith@/", "https://s.example/c/redacted/"),
        ("https://s.example/c/john.smith@localhost", "https://s.example/c/redacted"),
        ("https://s.example/c/john@@example.com/", "https://s.example/c/redacted/"),
        ("https://s.example/c/@example.com/", "https://s.example/c/redacted/"),
        # Kept: what is not an email, and a URL with nothing to remove, exactly as written.
        ("https://shop.example/@shop/", "https://shop.example/@shop/"),
        ("https://shop.example/a//b/?x=1&&y=%zz#", "https://shop.example/a//b/?x=1&&y=%zz#"),
        ("https://shop.example/p/?utm_medium=email", "https://shop.example/p/?utm_medium=email"),
        ("", ""),
        # Not a URL Python can split: the emails in it still go.
        ("http://[john@example.com", "http://redacted"),
        ("https://x]/john@example.com", "https://x]/redacted"),
    ],
)
def test_scrub_url(url, scrubbed):
    assert scrub_url(url) == scrubbed


@pytest.mark.parametrize("value", [None, 42, ["https://x.example/john@example.com"]])
def test_anything_but_a_string_is_left_for_validation(value):
    assert scrub_url(value) is value


def test_huge_and_hostile_urls_are_scrubbed_in_one_pass():
    # Patterns that make a backtracking email regex quadratic; this one is linear.
    for tail in ("a@" * 200_000, "%40" * 200_000, "a." * 200_000 + "x@", "x@" + "a." * 200_000):
        assert "@" not in scrub_url("https://s.example/?q=" + tail + "b@c.de").partition("?")[2]


@pytest.mark.django_db
def test_the_page_and_the_referrer_lose_their_emails():
    request = RequestFactory().get(
        "/confirm/john@example.com/",
        HTTP_USER_AGENT=UA,
        HTTP_REFERER="https://mail.example/open/john%40example.com/?email=john@example.com",
    )

    def view(request):
        send_event("Lead", user_data={"em": "john@example.com"})
        return HttpResponse()

    SessionMiddleware(CapiMiddleware(view))(request)
    # What a view stores on an order (browser_context) is clean too, not only the payload.
    assert browser_context(request)["event_source_url"] == "http://testserver/confirm/redacted/"
    assert browser_context(request)["referrer_url"] == "https://mail.example/open/redacted/"
    payload = OutboxEvent.objects.get().payload
    assert payload["event_source_url"] == "http://testserver/confirm/redacted/"
    assert payload["referrer_url"] == "https://mail.example/open/redacted/"
    assert "john" not in json.dumps(payload)


@pytest.mark.django_db
def test_explicit_and_stored_urls_lose_their_emails_when_the_event_is_built():
    stored = {  # a browser context stored on an order before URLs were scrubbed
        "client_user_agent": UA,
        "event_source_url": "https://shop.example/confirm/john@example.com/",
        "referrer_url": "https://mail.example/?to=john@example.com",
    }
    with use_browser_context(stored):
        from_context = send_event("Lead", user_data={"em": "john@example.com"})
        explicit = send_event(
            "Lead",
            user_data={"em": "john@example.com"},
            event_source_url="https://shop.example/thanks/?email=john@example.com&order=7",
        )
    assert from_context.payload["event_source_url"] == "https://shop.example/confirm/redacted/"
    assert from_context.payload["referrer_url"] == "https://mail.example/?to=redacted"
    assert explicit.payload["event_source_url"] == "https://shop.example/thanks/?order=7"
    for row in OutboxEvent.objects.all():
        assert row.status == "pending"
        assert "john" not in json.dumps(row.payload)
