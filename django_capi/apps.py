from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class CapiConfig(AppConfig):
    name = "django_capi"
    label = "django_capi"
    verbose_name = _("Meta Conversions API")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, dispatch, registry  # noqa: F401 - importing checks registers them

        registry.connect_signals()
        # Delivery listens to capture's announcements; capture never calls delivery.
        dispatch.connect()
        # Each installed app declares its conversions in a ``capi`` module, as with ``admin``.
        autodiscover_modules("capi")
