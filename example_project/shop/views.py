from decimal import Decimal

from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from django_capi import OutboxEvent, event_id_for

from .models import Order


@require_http_methods(["GET", "POST"])
def checkout(request):
    if request.method == "POST":
        order = Order.objects.create(
            email=request.POST["email"],
            phone=request.POST.get("phone", ""),
            total=Decimal(request.POST.get("total") or "49.90"),
            user_agent=request.headers.get("User-Agent", ""),
            ip_address=request.META.get("REMOTE_ADDR"),
        )
        # In a real shop a payment webhook does this later; the event is recorded either way.
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
