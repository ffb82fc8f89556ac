from decimal import Decimal

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from django_capi import OutboxEvent, browser_context, event_id_for

from .models import Order


@require_http_methods(["GET", "POST"])
def checkout(request):
    if request.method == "POST":
        order = Order.objects.create(
            email=request.POST["email"],
            phone=request.POST.get("phone", ""),
            total=Decimal(request.POST.get("total") or "49.90"),
            browser=browser_context(request),
        )
        if request.POST.get("payment") != "transfer":
            # Paid by card at once; a bank transfer is confirmed later by payment_webhook.
            order.status = "paid"
            order.save()
        return redirect(order)
    return render(
        request, "shop/checkout.html", {"events": OutboxEvent.objects.order_by("-pk")[:10]}
    )


@require_http_methods(["GET"])
def order_detail(request, pk):
    order = get_object_or_404(Order, pk=pk)
    event_id = event_id_for(order, "Purchase")
    event = OutboxEvent.objects.filter(event_name="Purchase", event_id=event_id).first()
    return render(
        request, "shop/order.html", {"order": order, "event": event, "event_id": event_id}
    )


@csrf_exempt
@require_http_methods(["POST"])
def payment_webhook(request, pk):
    """The payment provider confirms a transfer: no shopper's browser in this request. (A real
    webhook verifies the provider's signature first.)"""
    order = get_object_or_404(Order, pk=pk)
    order.status = "paid"
    order.save()
    return HttpResponse(status=204)
