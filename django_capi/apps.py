from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _

#: What the outbox's models need: each row links to the object that made it (a generic
#: foreign key to ContentType).
REQUIRED_APPS = ("django.contrib.contenttypes",)


class CapiConfig(AppConfig):
    name = "django_capi"
    label = "django_capi"
    verbose_name = _("Meta Conversions API")
    default_auto_field = "django.db.models.BigAutoField"

    def import_models(self) -> None:
        # Without contenttypes the models cannot even be imported (Django raises a
        # RuntimeError that names ContentType, not the fix): load none, so that
        # `manage.py check` can say what is missing (E007).
        if missing_apps():
            from django.apps import apps

            self.models = apps.all_models[self.label]
            return
        super().import_models()

    def ready(self) -> None:
        if missing_apps():
            register(check_required_apps)
            return

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


def missing_apps() -> list[str]:
    """The ``REQUIRED_APPS`` that are not installed (none before the app registry is)."""
    from django.apps import apps

    if not apps.apps_ready:
        return []
    return [name for name in REQUIRED_APPS if not apps.is_installed(name)]


def check_required_apps(**kwargs: Any) -> list[CheckMessage]:
    """``django_capi.E007``: an app the outbox's models need is not installed. Registered
    (and run) only then, by ``ready``: every other check needs the models."""
    return [
        Error(
            f"{name} is not in INSTALLED_APPS: django-capi's outbox needs it (each event "
            "row links to the object that made it), so django-capi is not loaded at all.",
            hint=f'Add "{name}" to INSTALLED_APPS.',
            id="django_capi.E007",
        )
        for name in missing_apps()
    ]
