"""Every value of the bad-input corpus through every door: a ``ModelEvent`` save,
``send_event``, the middleware (shop pages and the admin changelist) and the template tags.

For each value: nothing raises, no page answers 500; every outbox row is either pending and
acceptable to Meta (checked with the emulator's independent rules), or failed with a reason a
person can act on; and no raw email, phone or name is stored anywhere in the database. Runs in
both passes of ``make test`` (SQLite, then PostgreSQL).
"""

from __future__ import annotations

import json
import reprlib
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.template import Context, Template
from django.test import Client, RequestFactory

from django_capi import ModelEvent, OutboxEvent, browser_context, register, send_event
from django_capi.context import use_browser_context
from django_capi.registry import registered_events
from django_capi.testing import rules
from tests.database_dump import dump_database
from tests.shop.models import Lead, Order, Product

from .values import CORPUS, PII

pytestmark = pytest.mark.django_db

UA = "Mozilla/5.0 (X11; Linux x86_64) Corpus/1.0"
IP = "203.0.113.9"
BENIGN_EMAIL = "benign.buyer@shop.example.com"
PAGE = "https://shop.example.com/product/1/"
EVENT = "Contact"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_capi.middleware.CapiMiddleware",
]
#: Kinds a browser sends itself, in headers, cookies and query strings.
REQUEST_KINDS = frozenset({"url", "host", "cookie", "cookie_header", "email", "text"})
#: Words of a reason that tells the shop nothing it can act on.
VAGUE = ("unexpected", "see the log", "traceback")


def slots(kind: str, value: Any) -> list[dict[str, Any]]:
    """Where a value of ``kind`` goes in an event: each slot is one event."""
    if kind == "email":
        return [{"user_data": {"em": value}}]
    if kind == "phone":
        return [{"user_data": {"ph": value}}]
    if kind == "name":
        return [{"user_data": {"fn": value, "ln": value, "ct": value}}]
    if kind == "date":
        return [{"user_data": {"db": value}}, {"event_time": value}]
    if kind == "currency":
        return [{"custom_data": {"value": 10, "currency": value}}]
    if kind == "number":
        return [
            {"custom_data": {"value": value, "currency": "EUR", "num_items": value}},
            {"event_time": value},
            {"user_data": {"zp": value, "external_id": value}},
        ]
    if kind in ("url", "host"):
        url = value if kind == "url" else f"https://{value}/"
        return [{"event_source_url": url}, {"browser": {"referrer_url": url}}]
    if kind in ("cookie", "cookie_header"):
        return [{"browser": {"fbp": value, "fbc": value}}]
    if kind == "text":
        return [
            {"custom_data": {"content_name": value, value[:40] or "k": "v"}},
            {"user_data": {"external_id": value}, "browser": {"client_user_agent": value}},
            {"event_name": value},
            {"event_id": value},
            {"action_source": value},
        ]
    assert kind == "structure", kind
    return [
        {"custom_data": {"contents": value}},
        {"custom_data": value},
        {"user_data": value},
        {"browser": {"fbp": value, "client_user_agent": value}},
    ]


def draft(slot: Mapping[str, Any]) -> dict[str, Any]:
    """A valid website event with the slot's hostile part in it."""
    user_data: Any = {"em": BENIGN_EMAIL}
    if "user_data" in slot:
        given = slot["user_data"]
        user_data = {**user_data, **given} if isinstance(given, dict) else given
    browser = {"client_user_agent": UA, "client_ip_address": IP, **slot.get("browser", {})}
    return {
        "event_name": slot.get("event_name", EVENT),
        "event_id": slot.get("event_id"),
        "event_time": slot.get("event_time"),
        "action_source": slot.get("action_source", "website"),
        "user_data": user_data,
        "custom_data": slot.get("custom_data", {"value": 1, "currency": "EUR"}),
        "event_source_url": slot.get("event_source_url", PAGE),
        "browser": browser,
    }


#: The slot the corpus ModelEvent's hooks return, set by the test before each save.
current: dict[str, Any] = {}


@pytest.fixture
def corpus_event(isolated_registry) -> Iterator[ModelEvent[Lead]]:
    @register(Lead)
    class CorpusContact(ModelEvent[Lead]):
        event_name = EVENT

        def user_data(self, instance):
            return current["user_data"]

        def custom_data(self, instance):
            return current["custom_data"]

        def event_time(self, instance):
            return current["event_time"]

        def event_source_url(self, instance):
            return current["event_source_url"]

        def request_context(self, instance):
            return current["browser"]

        def event_id(self, instance):
            # Not send_event's id: the same id would rightly find send_event's row.
            given = current["event_id"]
            return f"model-{given}" if isinstance(given, str) else super().event_id(instance)

    yield next(event for event in registered_events(Lead) if event.event_name == EVENT)


#: Web servers refuse longer request lines and headers (gunicorn 4 KB, nginx 8 KB per
#: header): a megabyte string reaches a view through its body or the database, not a header.
HTTP_LIMIT = 16 * 1024


def text_of(value: Any) -> str:
    if isinstance(value, str):
        return value[:HTTP_LIMIT]
    try:
        # reprlib: a plain repr() of a 5,000-level structure raises RecursionError itself.
        return reprlib.repr(value)
    except ValueError:  # an int of more than 4,300 digits has no decimal text in Python
        return f"<int of {value.bit_length()} bits>"


def query_string(**params: str) -> str:
    # Surrogates cannot be encoded by the test client: send them as their raw UTF-8 bytes.
    return "&".join(
        f"{key}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
        for key, value in params.items()
    )


def wsgi(text: str) -> str:
    """A header as a WSGI server hands it to Django: its bytes, decoded as latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def hostile_headers(kind: str, value: Any) -> dict[str, str]:
    return {name: wsgi(text) for name, text in _headers(kind, text_of(value)).items()}


def _headers(kind: str, text: str) -> dict[str, str]:
    if kind not in REQUEST_KINDS:
        # Integrator data: it reaches the event through user_data and custom_data. Personal
        # data in a URL is promised scrubbed for emails only (the email kind below).
        return {}
    if kind == "url":
        return {"HTTP_REFERER": text}
    if kind == "host":
        return {"HTTP_HOST": text}
    if kind == "cookie":
        return {"HTTP_COOKIE": f"_fbp={text}; _fbc={text}"}
    if kind == "cookie_header":
        return {"HTTP_COOKIE": text}
    if kind == "email":
        # The path carries the value only when it has an "@": without one, nothing tells
        # "corpus.missing-at.example.org" or an MD5 in a path from a page's name, and the
        # promise is to redact email addresses (README, "The browser side"). The query still
        # carries every value: an ``email`` parameter goes whatever it holds.
        path = f"confirm/{text}/" if "@" in text else "confirm/"
        return {"HTTP_REFERER": f"https://shop.example.com/{path}?email={text}"}
    return {
        "HTTP_USER_AGENT": text,
        "HTTP_REFERER": f"https://ref.example/{text}",
        "HTTP_X_FORWARDED_FOR": text,
        "HTTP_ACCEPT_LANGUAGE": text,
    }


def secrets_of(kind: str, value: Any) -> list[str]:
    """The raw personal data in ``value`` that must not be stored, lower-cased like the dump."""
    if kind not in PII or not isinstance(value, str):
        return []
    raw = value.strip().lower()[:40]
    found = [raw] if len(raw) >= 6 else []
    if kind == "email" and "@" in raw and len(raw.split("@")[0]) >= 6:
        found.append(raw.split("@")[0] + "@")
    digits = "".join(c for c in value if c.isascii() and c.isdigit())
    if kind == "phone" and len(digits) >= 9:
        found.append(digits)
    return found


class Findings:
    """What went wrong for one value, collected over every door so one report shows all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attempt(self, door: str, action: Any) -> Any:
        try:
            with transaction.atomic():
                return action()
        except Exception as exc:  # noqa: BLE001 - every exception is a finding
            self.problems.append(f"{door}: raised {type(exc).__name__}: {str(exc)[:200]}")
            return None


def check_row(row: OutboxEvent, findings: Findings) -> None:
    where = f"row {row.event_name[:30]!r} ({row.status})"
    if row.status == OutboxEvent.Status.PENDING:
        try:
            json.dumps(row.payload, allow_nan=False)
            rules.validate_event(row.payload, time.time())
        except (ValueError, rules.Rejection) as exc:
            findings.problems.append(f"{where}: pending, but Meta would reject it: {exc}")
    elif row.status == OutboxEvent.Status.FAILED:
        reason = row.last_error.lower()
        if not reason.strip() or any(word in reason for word in VAGUE):
            findings.problems.append(f"{where}: failed without a clear reason: {row.last_error!r}")
    else:
        findings.problems.append(f"{where}: unexpected status")


@pytest.fixture
def shop(settings) -> dict[str, Any]:
    settings.MIDDLEWARE = MIDDLEWARE
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "SERVER_PAGE_VIEW": True}
    admin = User.objects.create(username="corpus-admin", is_staff=True, is_superuser=True)
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    return {"client": client, "product": Product.objects.create(sku="corpus-1", name="Mug")}


def groups(size: int = 8) -> list[tuple[str, list[tuple[int, Any]]]]:
    """The corpus in groups of values of one kind: one database setup serves several."""
    by_kind: dict[str, list[tuple[int, Any]]] = {}
    for number, (kind, value) in enumerate(CORPUS):
        by_kind.setdefault(kind, []).append((number, value))
    return [
        (kind, values[start : start + size])
        for kind, values in by_kind.items()
        for start in range(0, len(values), size)
    ]


GROUPS = groups()


@pytest.mark.parametrize(
    ("kind", "values"),
    GROUPS,
    ids=[f"{kind}-{values[0][0]:03d}-{values[-1][0]:03d}" for kind, values in GROUPS],
)
def test_hostile_values_break_nothing_and_leak_nothing(kind, values, shop, corpus_event):
    problems = []
    for number, value in values:
        findings = drive(kind, value, shop, corpus_event)
        problems += [f"[{kind}-{number:03d}] {problem}" for problem in findings.problems]
    assert not problems, "\n".join(dict.fromkeys(problems))


def drive(kind: str, value: Any, shop: dict[str, Any], corpus_event: ModelEvent[Lead]) -> Findings:
    """One value through every door; what went wrong."""
    findings = Findings()
    first_row = (OutboxEvent.objects.order_by("pk").values_list("pk", flat=True).last() or 0) + 1

    # 1. send_event, and 2. a ModelEvent save, with the value in each of its slots.
    for slot in slots(kind, value):
        fields = draft(slot)
        browser = fields.pop("browser")
        findings.attempt("send_event", lambda f=fields, b=browser: _send(f, b))
        if "event_name" in slot:
            continue  # a ModelEvent's name is a class attribute, checked when registered
        current.clear()
        current.update(draft(slot))
        # Registration checks the class attribute; an integrator's subclass could differ.
        corpus_event.action_source = current["action_source"]
        lead = findings.attempt("ModelEvent save", lambda: Lead.objects.create(email=BENIGN_EMAIL))
        if (
            lead is not None
            and not OutboxEvent.objects.filter(event_name=EVENT, source_id=str(lead.pk)).exists()
        ):
            findings.problems.append(f"ModelEvent save: the event was lost (slot {list(slot)})")

    # 3. The middleware: shop pages and the admin changelist with hostile headers and query.
    client: Client = shop["client"]
    headers = hostile_headers(kind, value)
    text = text_of(value)
    # The test shop's own views store ``label`` as custom_data: personal data stays out of it.
    label = "corpus" if kind in PII else text
    session = client.cookies["sessionid"].value
    admin_headers = {**headers}
    if "HTTP_COOKIE" in headers:
        admin_headers["HTTP_COOKIE"] = f"{headers['HTTP_COOKIE']}; sessionid={session}"
    pages = [("/shop/track/?" + query_string(event="Lead", label=label, fbclid=text), headers)]
    if kind in REQUEST_KINDS:  # what a browser controls: the other pages and the admin too
        admin_query = query_string(
            q=text, pixel_id=text, event_name=text, status__exact=text, o=text, p=text
        )
        pages += [
            (f"/shop/product/{shop['product'].pk}/?" + query_string(fbclid=text), headers),
            ("/admin/django_capi/outboxevent/?" + admin_query, admin_headers),
        ]
    for path, extra in pages:
        response = findings.attempt(path[:30], lambda p=path, e=extra: client.get(p, **e))
        if response is not None and response.status_code >= 500:
            error = getattr(response, "exc_info", None)
            cause = repr(error[1])[:200] if error else ""
            findings.problems.append(f"GET {path[:40]}: HTTP {response.status_code} {cause}")

    # 4. The template tags and browser_context() stored in a JSONField, as a checkout does.
    request = RequestFactory().get("/", HTTP_USER_AGENT=UA, REMOTE_ADDR=IP)
    request.META.update(headers)
    request.user = User(pk=10**6, username="u", email=text) if kind == "email" else AnonymousUser()
    lead = Lead.objects.order_by("pk").last()
    saved = OutboxEvent.objects.filter(pk__gte=first_row).order_by("pk").first()
    findings.attempt(
        "{% capi_pixel %} / {% capi_event %}",
        lambda: Template(
            "{% load capi %}{% capi_pixel %}{% capi_event row %}{% capi_event lead 'Contact' %}"
        ).render(Context({"request": request, "row": saved, "lead": lead})),
    )
    findings.attempt(
        "Order(browser=browser_context(request))",
        lambda: Order.objects.create(browser=browser_context(request)),
    )

    for row in OutboxEvent.objects.filter(pk__gte=first_row):
        check_row(row, findings)
    secrets = secrets_of(kind, value)
    dump = dump_database().lower() if secrets else ""  # nothing to look for otherwise
    for secret in secrets:
        if secret in dump:
            findings.problems.append(f"raw personal data stored: {secret[:40]!r}")
    return findings


def _send(fields: dict[str, Any], browser: dict[str, Any]) -> OutboxEvent | None:
    with use_browser_context(browser):
        return send_event(**fields)
