"""CapiMiddleware: the browser's IP, ids and consent, for every event of a request."""

from __future__ import annotations

import asyncio
import re

import pytest
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from django_capi import OutboxEvent, send_event
from django_capi.middleware import COOKIE_MAX_AGE, CapiMiddleware, browser_context
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
FBC = re.compile(r"fb\.1\.\d{13}\.(?P<click>.+)")


def capi(**settings):
    return override_settings(DJANGO_CAPI={"PIXEL_ID": "1234567890", **settings})


def run(view, request):
    """The request through SessionMiddleware and CapiMiddleware, as in a project."""
    return SessionMiddleware(CapiMiddleware(view))(request)


def get(path="/p/1/", **extra):
    extra.setdefault("HTTP_USER_AGENT", UA)
    extra.setdefault("REMOTE_ADDR", "203.0.113.5")
    return RequestFactory().get(path, **extra)


def lead_view(request):
    row = send_event("Lead", user_data={"em": "a@b.co"})
    return HttpResponse(str(row.pk) if row else "none")


def test_events_of_the_request_carry_its_context():
    request = get("/p/1/?utm=x", HTTP_REFERER="https://www.facebook.com/")
    request.COOKIES.update({"_fbp": "fb.1.1596403881668.1116446470"})
    run(lead_view, request)
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert user_data["client_ip_address"] == "203.0.113.5"
    assert user_data["client_user_agent"] == UA
    assert user_data["fbp"] == "fb.1.1596403881668.1116446470"
    payload = OutboxEvent.objects.get().payload
    assert payload["event_source_url"] == "http://testserver/p/1/"
    assert payload["referrer_url"] == "https://www.facebook.com/"


def test_model_saves_inside_the_request_carry_it_too(isolated_registry):
    from django_capi import ModelEvent, register
    from tests.shop.models import Lead

    @register(Lead)
    class Signup(ModelEvent[Lead]):
        event_name = "CompleteRegistration"

        def user_data(self, instance):
            return {"em": instance.email}

    def view(request):
        Lead.objects.create(email="x@y.co")
        return HttpResponse()

    run(view, get())
    row = OutboxEvent.objects.get(event_name="CompleteRegistration")
    assert row.status == "pending"
    assert row.payload["user_data"]["client_ip_address"] == "203.0.113.5"


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "6.6.6.6", "10.0.0.1"),  # a spoofed header is never trusted by default
        (1, "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        (2, "6.6.6.6, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
        (2, "198.51.100.7", "10.0.0.1"),  # fewer hops than proxies: the header lies
        (1, "not-an-ip", "10.0.0.1"),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_the_ip_comes_from_trusted_proxies_only(trusted, forwarded, expected):
    request = get(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    with capi(TRUSTED_PROXY_COUNT=trusted):
        run(lambda request: HttpResponse(), request)
        assert browser_context(request)["client_ip_address"] == expected


def test_a_click_id_becomes_a_first_party_fbc_cookie_with_its_case_kept():
    request = get("/?fbclid=IwAR2F4-dbP0l7Mn1IawQQ")
    response = run(lead_view, request)
    cookie = response.cookies["_fbc"]
    assert FBC.fullmatch(cookie.value)["click"] == "IwAR2F4-dbP0l7Mn1IawQQ"
    assert cookie["max-age"] == COOKIE_MAX_AGE
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]
    assert not cookie["httponly"]
    # This request's own events already carry it.
    assert OutboxEvent.objects.get().payload["user_data"]["fbc"] == cookie.value


def test_the_fbc_cookie_is_secure_on_https():
    response = run(lead_view, get("/?fbclid=AbC", secure=True))
    assert response.cookies["_fbc"]["secure"]


def test_a_click_id_in_the_referrer_counts_when_the_url_has_none():
    response = run(lead_view, get("/", HTTP_REFERER="https://shop.example/?fbclid=FromReferrer"))
    assert response.cookies["_fbc"].value.endswith(".FromReferrer")


@pytest.mark.parametrize(
    ("cookie", "replaced"),
    [
        ("fb.1.1554763741205.SameId", False),
        ("fb.1.1554763741205.SameId.AQIAAQAB", False),  # a Parameter Builder appendix
        ("fb.1.1554763741205.OlderId", True),
        ("fb.1.1554763741205.sameid", True),  # case matters
    ],
)
def test_the_cookie_is_replaced_only_for_another_click(cookie, replaced):
    request = get("/?fbclid=SameId")
    request.COOKIES["_fbc"] = cookie
    response = run(lead_view, request)
    assert ("_fbc" in response.cookies) is replaced
    fbc = OutboxEvent.objects.get().payload["user_data"]["fbc"]
    assert (fbc != cookie) is replaced


def test_fbp_is_set_only_when_asked():
    assert "_fbp" not in run(lead_view, get()).cookies
    with capi(SET_FBP_COOKIE=True):
        response = run(lead_view, get())
    assert re.fullmatch(r"fb\.1\.\d{13}\.\d+", response.cookies["_fbp"].value)
    assert OutboxEvent.objects.last().payload["user_data"]["fbp"] == response.cookies["_fbp"].value


def with_session(request):
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store["cart"] = [1]  # the shop's own session
    store.create()
    request.COOKIES["sessionid"] = store.session_key
    return request


def test_the_session_keeps_the_ids_for_later_requests():
    first = with_session(get("/?fbclid=KeepMe"))
    run(lead_view, first)
    second = get("/checkout/")
    second.COOKIES["sessionid"] = first.COOKIES["sessionid"]  # the _fbc cookie got lost
    run(lambda request: HttpResponse(), second)
    assert browser_context(second)["fbc"].endswith(".KeepMe")
    assert set(second.session["django_capi_browser"]) == {"fbc"}  # no IP, no user agent


def test_no_session_is_created_just_for_the_ids():
    response = run(lead_view, get("/?fbclid=NoSession"))
    assert "sessionid" not in response.cookies
    assert "_fbc" in response.cookies


def test_an_oversized_or_strange_click_id_is_ignored():
    for fbclid in ("A" * 600, 'x;y="1"', "a b"):
        request = RequestFactory().get("/", {"fbclid": fbclid}, HTTP_USER_AGENT=UA)
        assert "_fbc" not in run(lead_view, request).cookies


def test_an_order_paid_later_without_a_browser_carries_the_checkout_context():
    stored = {}

    def checkout(request):
        stored.update(browser_context(request))
        return HttpResponse()

    run(checkout, get("/checkout/?fbclid=PaidLater"))
    # Later, in a payment webhook: no request, the stored context speaks for the shopper.
    order = OrderFactory(user_agent="", ip="")
    order.browser = stored
    order.status = "paid"
    order.save()
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert user_data["fbc"].endswith(".PaidLater")
    assert user_data["client_ip_address"] == "203.0.113.5"
    assert user_data["client_user_agent"] == UA


def refuse(request):
    return request.COOKIES.get("consent") == "yes"


def test_without_consent_nothing_is_stored_and_no_cookie_is_set():
    with capi(CONSENT="tests.test_middleware.refuse"):
        request = with_session(get("/?fbclid=NoConsent"))
        request.COOKIES["_fbp"] = "fb.1.1596403881668.1116446470"  # set before the refusal
        response = run(lead_view, request)
        assert response.content == b"none"
        assert response.cookies["_fbp"]["max-age"] == 0  # taken back
        assert response.cookies["_fbc"]["max-age"] == 0 if "_fbc" in response.cookies else True
        assert "Cookie" in response["Vary"]
        assert "django_capi_browser" not in request.session

        def pay(request):
            order = OrderFactory()
            order.browser = browser_context(request)
            order.status = "paid"
            order.save()
            return HttpResponse()

        run(pay, get())
        assert not OutboxEvent.objects.exists()
        granted = get()
        granted.COOKIES["consent"] = "yes"
        assert run(lead_view, granted).content != b"none"


def broken_consent(request):
    raise RuntimeError("consent banner bug")


def test_a_broken_consent_check_counts_as_refused(caplog):
    with capi(CONSENT="tests.test_middleware.broken_consent"):
        assert run(lead_view, get()).content == b"none"
    assert "treating it as refused" in caplog.text


def test_the_middleware_works_in_async_views_with_a_session():
    from asgiref.sync import sync_to_async

    async def view(request):
        return HttpResponse()

    middleware = CapiMiddleware(view)
    request = get("/?fbclid=AsyncClick")
    with_session(request)
    from importlib import import_module

    from django.conf import settings

    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES["sessionid"])
    response = asyncio.run(middleware(request))
    assert response.cookies["_fbc"].value.endswith(".AsyncClick")
    saved = asyncio.run(sync_to_async(lambda: dict(request.session))())
    assert saved["django_capi_browser"]["fbc"].endswith(".AsyncClick")


def test_a_staff_members_browser_never_lands_on_a_system_event():
    def view(request):
        row = send_event("Lead", user_data={"em": "phone@b.co"}, action_source="phone_call")
        return HttpResponse(str(row.pk))

    run(view, get("/admin/?fbclid=Staff"))
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert set(user_data) == {"em"}


def test_limited_data_use_from_the_setting_and_per_event():
    with capi(LIMITED_DATA_USE={"country": 1, "state": 1000}):
        run(lead_view, get())
    payload = OutboxEvent.objects.get().payload
    assert payload["data_processing_options"] == ["LDU"]
    assert (
        payload["data_processing_options_country"],
        payload["data_processing_options_state"],
    ) == (
        1,
        1000,
    )
    row = send_event(
        "Lead",
        user_data={"em": "z@b.co"},
        action_source="chat",
        limited_data_use={"country": 0, "state": 0},
    )
    assert row.payload["data_processing_options_country"] == 0
    bad = send_event(
        "Lead", user_data={"em": "z@b.co"}, action_source="chat", limited_data_use={"country": 1}
    )
    assert bad.status == "failed"
    assert "limited_data_use must be None or" in bad.last_error


def test_the_limited_data_use_hook_of_a_model_event(isolated_registry):
    from django_capi import ModelEvent, register
    from tests.shop.models import Lead

    @register(Lead)
    class CaliforniaLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

        def limited_data_use(self, instance):
            return {"country": 1, "state": 1000}

    Lead.objects.create(email="ca@b.co")
    payload = OutboxEvent.objects.get(event_name="Contact").payload
    assert payload["data_processing_options"] == ["LDU"]
    assert payload["data_processing_options_state"] == 1000


@pytest.mark.parametrize(
    ("domain", "index"), [(".example.com", 1), ("shop.example.com", 2), (".example.co.uk", 2)]
)
def test_cookies_can_live_on_the_site_domain_like_the_pixels(domain, index):
    with capi(COOKIE_DOMAIN=domain, SET_FBP_COOKIE=True):
        response = run(lead_view, get("/?fbclid=OnDomain"))
    for name in ("_fbc", "_fbp"):
        assert response.cookies[name]["domain"] == domain
        assert response.cookies[name].value.startswith(f"fb.{index}.")
    assert response.cookies["_fbc"].value.endswith(".OnDomain")


def test_a_host_only_cookie_uses_metas_server_index():
    response = run(lead_view, get("/?fbclid=HostOnly"))
    assert response.cookies["_fbc"]["domain"] == ""
    assert response.cookies["_fbc"].value.startswith("fb.1.")
