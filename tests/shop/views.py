"""The test shop's pages, which ``tests/browser`` drives in a real Chromium.

Product page (ViewContent) → add to cart (AddToCart) → cart → checkout (the order, paid by card
at once or later by the payment provider's webhook) → thank-you page (Purchase). Every page
renders the Pixel through ``base.html``'s ``{% capi_pixel %}``, and each event recorded for
the browser is rendered again as its Pixel twin with ``{% capi_event %}``, sharing its
``event_id``. Writes happen in ``transaction.atomic``, as ``ATOMIC_REQUESTS`` would do.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

import django_capi
from django_capi import OutboxEvent, send_event

from .models import Order, Product

CURRENCY = "EUR"
#: Session keys.
CART = "shop_cart"  # {product pk: quantity}
PIXEL_EVENTS = "shop_pixel_events"  # outbox rows recorded by a POST, rendered after its redirect
ORDERS = "shop_orders"  # orders this browser placed: only it sees their thank-you pages
#: The cookie the consent banner sets: "granted" or "denied".
CONSENT_COOKIE = "shop_consent"


def tracking_allowed(request: HttpRequest) -> bool:
    """``DJANGO_CAPI["CONSENT"]`` in the consent tests: the shopper accepted the banner."""
    return request.COOKIES.get(CONSENT_COOKIE) == "granted"


class AddToCartForm(forms.Form):
    product = forms.IntegerField(min_value=1)
    quantity = forms.IntegerField(min_value=1, max_value=99, initial=1)


class CheckoutForm(forms.Form):
    PAYMENT_CHOICES = [("card", "Card (paid at once)"), ("transfer", "Bank transfer (paid later)")]

    email = forms.EmailField()
    first_name = forms.CharField(max_length=100, required=False)
    phone = forms.CharField(max_length=50, required=False)
    payment = forms.ChoiceField(choices=PAYMENT_CHOICES, initial="card", widget=forms.RadioSelect)


def product_data(product: Product, quantity: int = 1) -> dict[str, Any]:
    return {
        "content_type": "product",
        "content_ids": [product.sku],
        "content_name": product.name,
        "contents": [{"id": product.sku, "quantity": quantity, "item_price": product.price}],
        "value": product.price * quantity,
        "currency": CURRENCY,
    }


@require_GET
@transaction.atomic
def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    product = get_object_or_404(Product, pk=pk)
    view_content = send_event("ViewContent", custom_data=product_data(product), request=request)
    return render(
        request,
        "shop/product.html",
        {
            "product": product,
            "form": AddToCartForm(initial={"product": product.pk}),
            "view_content": view_content,
        },
    )


@require_POST
@transaction.atomic
def cart_add(request: HttpRequest) -> HttpResponse:
    form = AddToCartForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("invalid cart line")
    product = get_object_or_404(Product, pk=form.cleaned_data["product"])
    quantity = form.cleaned_data["quantity"]
    cart = request.session.get(CART, {})
    cart[str(product.pk)] = cart.get(str(product.pk), 0) + quantity
    request.session[CART] = cart
    row = send_event("AddToCart", custom_data=product_data(product, quantity), request=request)
    _render_on_next_page(request, row)
    return redirect("shop:cart")


@require_GET
@transaction.atomic
def cart(request: HttpRequest) -> HttpResponse:
    lines, total = _cart_lines(request)
    return render(
        request,
        "shop/cart.html",
        {"lines": lines, "total": total, "pixel_events": _pop_pixel_events(request)},
    )


@require_http_methods(["GET", "POST"])
@transaction.atomic
def checkout(request: HttpRequest) -> HttpResponse:
    lines, total = _cart_lines(request)
    if not lines:
        return redirect("shop:cart")
    form = CheckoutForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        order = Order.objects.create(
            email=form.cleaned_data["email"],
            first_name=form.cleaned_data["first_name"],
            phone=form.cleaned_data["phone"],
            total=total,
            currency=CURRENCY,
            items=[
                {
                    "id": product.sku,
                    "name": product.name,
                    "quantity": quantity,
                    "item_price": str(product.price),
                }
                for product, quantity, _ in lines
            ],
            # What OrderPaid.request_context returns when the payment webhook, which has no
            # browser, marks the order paid.
            browser=django_capi.browser_context(request),
            user_agent=request.headers.get("User-Agent", "")[:300],
            ip=request.META.get("REMOTE_ADDR", ""),
        )
        if form.cleaned_data["payment"] == "card":
            order.status = "paid"  # the Purchase is recorded by this save, in this transaction
            order.save()
        request.session.pop(CART, None)
        request.session[ORDERS] = [*request.session.get(ORDERS, []), order.pk]
        return redirect("shop:thanks", pk=order.pk)
    return render(request, "shop/checkout.html", {"form": form, "lines": lines, "total": total})


@require_GET
@transaction.atomic
def thanks(request: HttpRequest, pk: int) -> HttpResponse:
    if pk not in request.session.get(ORDERS, []):
        return HttpResponse("not your order", status=404)
    order = get_object_or_404(Order, pk=pk)
    return render(request, "shop/thanks.html", {"order": order})


@require_POST
@transaction.atomic
def payment_webhook(request: HttpRequest) -> HttpResponse:
    """The payment provider confirms a bank transfer: no browser, no shopper's cookies."""
    order = get_object_or_404(Order.objects.select_for_update(), pk=request.POST.get("order"))
    if order.status != "paid":
        order.status = "paid"
        order.save()
    return HttpResponse("ok")


@require_GET
@transaction.atomic
def track(request: HttpRequest) -> HttpResponse:
    """A custom event named by the query string, as a campaign landing page might record."""
    event_name = request.GET.get("event", "")
    label = request.GET.get("label", "")
    row = send_event(event_name, custom_data={"label": label}, request=request)
    return render(request, "shop/track.html", {"event": row, "label": label})


#: The second brand's pixel in the several-pixels browser test (``PIXELS``).
BRAND_PIXEL = "2222222222"


@require_GET
@transaction.atomic
def brands(request: HttpRequest) -> HttpResponse:
    """A newsletter page of a shop with two brands: one sign-up for each brand's pixel, each
    with its own event id, both Pixel events on the same page."""
    signups = [
        send_event("Subscribe", custom_data={"brand": "house"}, request=request),
        send_event(
            "Subscribe", custom_data={"brand": "partner"}, request=request, pixel_id=BRAND_PIXEL
        ),
    ]
    events = [row for row in signups if row is not None]
    return render(request, "shop/brands.html", {"page_pixels": events, "pixel_events": events})


@require_POST
def consent(request: HttpRequest) -> HttpResponse:
    """The consent banner: remembers the choice in a cookie and goes back to the page."""
    choice = "granted" if request.POST.get("choice") == "granted" else "denied"
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}):
        next_url = "/"
    response = redirect(next_url)
    response.set_cookie(CONSENT_COOKIE, choice, max_age=180 * 86400, samesite="Lax")
    return response


def _cart_lines(request: HttpRequest) -> tuple[list[tuple[Product, int, Decimal]], Decimal]:
    cart = request.session.get(CART, {})
    products = Product.objects.in_bulk([int(pk) for pk in cart])
    lines = [
        (products[int(pk)], quantity, products[int(pk)].price * quantity)
        for pk, quantity in cart.items()
        if int(pk) in products
    ]
    return lines, sum((subtotal for *_, subtotal in lines), Decimal(0))


def _render_on_next_page(request: HttpRequest, row: OutboxEvent | None) -> None:
    # No row (no consent) or an unsaved one has no Pixel twin to render.
    if row is not None and row.pk is not None:
        request.session[PIXEL_EVENTS] = [*request.session.get(PIXEL_EVENTS, []), row.pk]


def _pop_pixel_events(request: HttpRequest) -> list[OutboxEvent]:
    pks = request.session.pop(PIXEL_EVENTS, [])
    return list(OutboxEvent.objects.filter(pk__in=pks).order_by("pk")) if pks else []
