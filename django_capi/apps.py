from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class CapiConfig(AppConfig):
    name = "django_capi"
    label = "django_capi"
    verbose_name = _("Meta Conversions API")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from . import checks, dispatch, installation, registry  # noqa: F401 - checks registers them

        registry.connect_signals()
        # Delivery listens to capture's announcements; capture never calls delivery.
        dispatch.connect()
        post_migrate.connect(
            installation.ensure_installation, sender=self, dispatch_uid="django_capi.installation"
        )
        # Each installed app declares its conversions in a ``capi`` module, as with ``admin``.
        autodiscover_modules("capi")
