"""Meta's fixed vocabularies, importable before Django's app registry is ready."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class ActionSource(models.TextChoices):
    """Where the conversion happened: Meta's nine ``action_source`` values."""

    WEBSITE = "website", _("Website")
    EMAIL = "email", _("Email")
    APP = "app", _("App")
    PHONE_CALL = "phone_call", _("Phone call")
    CHAT = "chat", _("Chat")
    PHYSICAL_STORE = "physical_store", _("Physical store")
    SYSTEM_GENERATED = "system_generated", _("System generated")
    BUSINESS_MESSAGING = "business_messaging", _("Business messaging")
    OTHER = "other", _("Other")


#: Meta's standard events: the Pixel tracks them with ``track``, anything else with
#: ``trackCustom``.
STANDARD_EVENTS = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Donate",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "PageView",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)


#: The ``user_data`` keys that drive Meta's matching, in the order the health page shows them.
#: Each row stores which it has as bits of ``OutboxEvent.match_keys`` in this order: only
#: append to it (a key removed or moved would change what stored bits mean).
MATCH_KEYS = ("em", "ph", "external_id", "fbc", "fbp", "client_ip_address", "client_user_agent")


def match_key_bits(user_data: object) -> int:
    """The ``match_keys`` bits of ``user_data``: bit *i* set when it has ``MATCH_KEYS[i]``."""
    if not isinstance(user_data, dict):
        return 0
    return sum(1 << index for index, key in enumerate(MATCH_KEYS) if key in user_data)
