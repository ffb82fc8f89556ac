"""The paid order as a django-capi conversion: what a shop would write."""

from collections.abc import Mapping
from decimal import Decimal

from django_capi import ModelEvent, register

from .models import Order

SHOP_URL = "https://shop.example.com"


@register(Order)
class OrderPaid(ModelEvent[Order]):
    event_name = "Purchase"

    def should_send(self, instance: Order, created: bool) -> bool:
        return instance.status == "paid"

    def user_data(self, instance: Order) -> Mapping[str, object]:
        return {
            "em": instance.email,
            "ph": instance.phone,
            "fn": instance.first_name,
            "ln": instance.last_name,
            "ct": instance.city,
            "st": instance.state,
            "zp": instance.zip_code,
            "country": instance.country,
            "external_id": instance.customer_id,
        }

    def custom_data(self, instance: Order) -> Mapping[str, object]:
        return {
            "value": instance.total,
            "currency": instance.currency,
            "content_type": "product",
            "content_ids": [item["id"] for item in instance.items],
            "contents": [
                {"id": i["id"], "quantity": i["quantity"], "item_price": Decimal(i["price"])}
                for i in instance.items
            ],
            "num_items": sum(item["quantity"] for item in instance.items),
            "order_id": str(instance.pk),
        }

    def event_source_url(self, instance: Order) -> str:
        return f"{SHOP_URL}/checkout/"

    def request_context(self, instance: Order) -> Mapping[str, object]:
        return {
            "client_ip_address": instance.ip,
            "client_user_agent": instance.user_agent,
            "fbp": instance.fbp,
            "fbc": instance.fbc,
        }
