# shop/capi.py: django-capi finds this module in every installed app, like admin.py.
from django_capi import ModelEvent, register

from .models import Lead, Order


@register(Order)
class OrderPaid(ModelEvent[Order]):
    event_name = "Purchase"  # action_source defaults to "website"

    def should_send(self, instance, created):
        return instance.status == "paid"

    def user_data(self, instance):
        # Raw values: django-capi normalizes and hashes them before anything is stored.
        return {
            "em": instance.email,
            "ph": instance.phone,
            "fn": instance.first_name,
            "ln": instance.last_name,
            "ct": instance.city,
            "zp": instance.postal_code,
            "country": instance.country,
        }

    def custom_data(self, instance):
        return {
            "value": instance.total,
            "currency": "EUR",
            "contents": instance.contents(),
            "order_id": str(instance.pk),
        }

    def event_source_url(self, instance):
        return f"https://shop.example.com{instance.get_absolute_url()}"

    def request_context(self, instance):
        # browser_context(request), stored at checkout: the click id (fbc), fbp, IP and user
        # agent reach Meta even when a payment webhook marks the order paid later.
        return instance.browser


@register(Lead)
class NewLead(ModelEvent[Lead]):
    event_name = "Lead"  # should_send defaults to "the row was just created"

    def user_data(self, instance):
        return {"em": instance.email, "fn": instance.first_name}
