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
