"""The test shop's conversions, discovered by django-capi like any app's ``capi`` module."""

from collections.abc import Mapping
from decimal import Decimal

from django_capi import ModelEvent, register

from .models import Lead, Order

SHOP_URL = "https://shop.example.com"


@register(Order)
class OrderPaid(ModelEvent[Order]):
    event_name = "Purchase"

    def should_send(self, instance: Order, created: bool) -> bool:
        return instance.status == "paid"

    def user_data(self, instance: Order) -> Mapping[str, object]:
        return {"em": instance.email, "ph": instance.phone, "fn": instance.first_name}

    def custom_data(self, instance: Order) -> Mapping[str, object]:
        data: dict[str, object] = {"value": instance.total, "currency": instance.currency}
        if instance.items:  # orders placed through the shop's checkout (tests/browser)
            data.update(
                content_type="product",
                content_ids=[item["id"] for item in instance.items],
                content_name=", ".join(item["name"] for item in instance.items),
                contents=[
                    {
                        "id": item["id"],
                        "quantity": item["quantity"],
                        "item_price": Decimal(item["item_price"]),
                    }
                    for item in instance.items
                ],
                num_items=sum(item["quantity"] for item in instance.items),
                order_id=str(instance.pk),
            )
        return data

    def event_source_url(self, instance: Order) -> str:
        return f"{SHOP_URL}/checkout/"

    def request_context(self, instance: Order) -> Mapping[str, object]:
        # The checkout stores ``django_capi.browser_context(request)``; older orders only
        # kept the user agent and IP.
        return instance.browser or {
            "client_user_agent": instance.user_agent,
            "client_ip_address": instance.ip,
        }


@register(Lead)
class NewLead(ModelEvent[Lead]):
    event_name = "Lead"
    action_source = "system_generated"

    def user_data(self, instance: Lead) -> Mapping[str, object]:
        return {"em": instance.email}
