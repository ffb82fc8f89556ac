"""The example shop: catalogue → product (ViewContent) → cart (AddToCart) → checkout
(InitiateCheckout) → payment → thank-you page (Purchase), and a contact form (Lead).

Each event recorded for the browser is rendered again as its Pixel twin with
``{% capi_event %}``, sharing its ``event_id``; ``base.html`` renders the Pixel itself with
``{% capi_pixel %}``. Every request is one transaction (``ATOMIC_REQUESTS``), so an order and
its outbox row commit together.
"""

from decimal import Decimal

from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from django_capi import OutboxEvent, browser_context, event_id_for, send_event

from .models import Lead, Order, OrderLine, Product

CURRENCY = "EUR"
# Session keys.
CART = "cart"  # {product pk: quantity}
PIXEL_EVENTS = "pixel_events"  # outbox rows recorded by a POST, rendered after its redirect
ORDERS = "orders"  # orders this browser placed: only it sees their pages
LEADS = "leads"


class AddToCartForm(forms.Form):
    product = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    quantity = forms.IntegerField(min_value=1, max_value=99, initial=1)


class CheckoutForm(forms.ModelForm):
    class Meta:
        model = Order
        fields = [
            "email",
            "phone",
            "first_name",
            "last_name",
            "street",
            "city",
            "postal_code",
            "country",
        ]
        labels = {"country": "Country code"}


class ContactForm(forms.ModelForm):
    class Meta:
        model = Lead
        fields = ["first_name", "email", "message"]
        widgets = {"message": forms.Textarea(attrs={"rows": 4})}


def cart_summary(request):
    """Template context processor: the number of items in the cart, for the header."""
    cart = getattr(request, "session", {}).get(CART, {})
    return {"cart_count": sum(cart.values()) if isinstance(cart, dict) else 0}


def contents_data(lines):
    """Meta's ``custom_data`` for cart lines ``[(product, quantity)]``."""
    return {
        "content_type": "product",
        "content_ids": [product.sku for product, _ in lines],
        "contents": [
            {"id": product.sku, "quantity": quantity, "item_price": product.price}
            for product, quantity in lines
        ],
        "num_items": sum(quantity for _, quantity in lines),
        "value": sum((product.price * quantity for product, quantity in lines), Decimal(0)),
        "currency": CURRENCY,
    }


@require_GET
def catalogue(request):
    return render(request, "shop/catalogue.html", {"products": Product.objects.all()})


@require_GET
def product_detail(request, slug):
    product = get_object_or_404(Product, slug=slug)
    # Each view of the page is a ViewContent; the template renders its Pixel twin.
    view_content = send_event(
        "ViewContent",
        custom_data={"content_name": product.name, **contents_data([(product, 1)])},
        request=request,
    )
    form = AddToCartForm(initial={"product": product.pk})
    return render(
        request,
        "shop/product.html",
        {"product": product, "form": form, "pixel_events": [view_content]},
    )


@require_POST
def cart_add(request):
    form = AddToCartForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("Invalid cart line.")
    product = get_object_or_404(Product, pk=form.cleaned_data["product"])
    quantity = form.cleaned_data["quantity"]
    cart = request.session.get(CART, {})
    cart[str(product.pk)] = min(cart.get(str(product.pk), 0) + quantity, 99)
    request.session[CART] = cart
    row = send_event("AddToCart", custom_data=contents_data([(product, quantity)]), request=request)
    _render_on_next_page(request, row)
    messages.success(request, f"{product.name} is in your cart.")
    return redirect("cart")


@require_POST
def cart_remove(request, pk):
    cart = request.session.get(CART, {})
    cart.pop(str(pk), None)
    request.session[CART] = cart
    return redirect("cart")


@require_GET
def cart(request):
    lines = _cart_lines(request)
    return render(
        request,
        "shop/cart.html",
        {
            "lines": [(p, q, p.price * q) for p, q in lines],
            "total": _total(lines),
            "pixel_events": _pop_pixel_events(request),
        },
    )


@require_http_methods(["GET", "POST"])
def checkout(request):
    lines = _cart_lines(request)
    if not lines:
        return redirect("cart")
    form = CheckoutForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        order = form.save(commit=False)
        order.total = _total(lines)
        # The click id, fbp, IP and user agent, for the Purchase that a payment webhook may
        # record later, when no browser is there (OrderPaid.request_context returns it).
        order.browser = browser_context(request)
        order.save()
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=product, quantity=quantity, price=product.price)
            for product, quantity in lines
        )
        request.session.pop(CART, None)
        request.session[ORDERS] = [*request.session.get(ORDERS, []), order.pk]
        return redirect("payment", pk=order.pk)
    pixel_events = []
    if request.method == "GET":
        pixel_events.append(
            send_event("InitiateCheckout", custom_data=contents_data(lines), request=request)
        )
    return render(
        request,
        "shop/checkout.html",
        {
            "form": form,
            "lines": [(p, q, p.price * q) for p, q in lines],
            "total": _total(lines),
            "pixel_events": pixel_events,
        },
    )


@require_http_methods(["GET", "POST"])
def payment(request, pk):
    order = _own_order(request, pk)
    if order.status == Order.Status.PAID:
        return redirect(order)
    if request.method == "POST":
        if request.POST.get("method") == "card":
            # The card is charged at once: this save records the Purchase, in this transaction.
            _mark_paid(order)
        else:
            messages.info(
                request, "We will ship as soon as the payment provider confirms your transfer."
            )
        return redirect(order)
    return render(request, "shop/payment.html", {"order": order})


@require_GET
def order_detail(request, pk):
    """The thank-you page, with the Purchase's Pixel twin once the order is paid."""
    order = _own_order(request, pk)
    event_id = event_id_for(order, "Purchase")
    event = OutboxEvent.objects.filter(event_name="Purchase", event_id=event_id).first()
    webhook = request.build_absolute_uri(f"/payments/{order.pk}/paid/")
    return render(
        request,
        "shop/order.html",
        {"order": order, "event": event, "event_id": event_id, "webhook": webhook},
    )


@csrf_exempt
@require_POST
def payment_webhook(request, pk):
    """The payment provider confirms a transfer: no shopper's browser in this request, yet
    the Purchase carries the browser's fbc, fbp, IP and user agent stored at checkout. (A real
    webhook verifies the provider's signature first.)"""
    order = get_object_or_404(Order.objects.select_for_update(), pk=pk)
    if order.status != Order.Status.PAID:
        _mark_paid(order)
    return HttpResponse(status=204)


@require_http_methods(["GET", "POST"])
def contact(request):
    form = ContactForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        lead = form.save()  # records the Lead (shop/capi.py), with this request's context
        request.session[LEADS] = [*request.session.get(LEADS, []), lead.pk][-20:]
        return redirect("contact-thanks", pk=lead.pk)
    return render(request, "shop/contact.html", {"form": form})


@require_GET
def contact_thanks(request, pk):
    if pk not in request.session.get(LEADS, []):
        raise Http404("Not your message.")
    lead = get_object_or_404(Lead, pk=pk)
    return render(request, "shop/contact_thanks.html", {"lead": lead})


def _mark_paid(order):
    order.status = Order.Status.PAID
    order.paid_at = timezone.now()
    order.save()


def _own_order(request, pk):
    # Only the browser that placed an order sees it: order numbers are easy to guess.
    if pk not in request.session.get(ORDERS, []):
        raise Http404("Not your order.")
    return get_object_or_404(Order, pk=pk)


def _cart_lines(request):
    cart = request.session.get(CART, {})
    products = Product.objects.in_bulk([int(pk) for pk in cart])
    return [(products[int(pk)], qty) for pk, qty in cart.items() if int(pk) in products]


def _total(lines):
    return sum((product.price * quantity for product, quantity in lines), Decimal(0))


def _render_on_next_page(request, row):
    # No row (no consent) or an unsaved one has no Pixel twin to render.
    if row is not None and row.pk is not None:
        request.session[PIXEL_EVENTS] = [*request.session.get(PIXEL_EVENTS, []), row.pk]


def _pop_pixel_events(request):
    pks = request.session.pop(PIXEL_EVENTS, [])
    return list(OutboxEvent.objects.filter(pk__in=pks).order_by("pk")) if pks else []
