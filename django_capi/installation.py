"""This installation's own event ids: the namespace of the default ``event_id``.

The default id is a UUIDv5 of (model, pk, event name) under a namespace. Under one namespace
for everybody, order 1 of staging, of production and of a second shop sending to the same
pixel would share one Purchase id, and Meta keeps only the first event of an id [DEDUP]: a real
purchase would be thrown away as a duplicate. So each database holding an outbox gets a random
namespace of its own, stored at migrate time (``post_migrate``, which ``flush`` sends too), and
read once per process and alias. ``DJANGO_CAPI["EVENT_ID_NAMESPACE"]`` overrides it, e.g. to
keep the ids of a database moved to a new server without its ``Installation`` row.
"""

from __future__ import annotations

import logging
import uuid
from functools import cache
from typing import Any

from django.apps import apps as global_apps
from django.apps.registry import Apps
from django.db import DatabaseError, router, transaction

from .conf import capi_settings
from .exceptions import CapiConfigurationError
from .models import Installation

logger = logging.getLogger(__name__)

#: The namespace of every event id before installations had their own. Fixed forever: an
#: installation upgraded with rows in its outbox keeps it (see ``ensure_installation``).
LEGACY_EVENT_ID_NAMESPACE = uuid.UUID("8abca9e4-6fe3-4243-89a2-77d7715fb220")


def event_id_namespace(alias: str) -> uuid.UUID:
    """The namespace of default event ids for rows on database ``alias``."""
    return describe_namespace(alias)[0]


def describe_namespace(alias: str) -> tuple[uuid.UUID, str]:
    """The namespace for ``alias`` and where it comes from, in words (for ``capi_doctor``)."""
    try:
        override = capi_settings().event_id_namespace
    except CapiConfigurationError:
        override = None  # the row is recorded as failed; its id must still be the usual one
    if override is not None:
        return override, "from the EVENT_ID_NAMESPACE setting"
    try:
        return stored_namespace(alias), "stored in the database at migrate time"
    except (Installation.DoesNotExist, DatabaseError):
        # Not migrated yet: until it is, the ids of an upgraded installation stay as they were.
        _warn_unmigrated(alias)
        return LEGACY_EVENT_ID_NAMESPACE, "the fixed namespace of earlier versions (not migrated)"


@cache
def stored_namespace(alias: str) -> uuid.UUID:
    """The namespace stored on ``alias``, queried once per process (a miss raises and is not
    cached). ``stored_namespace.cache_clear()`` forgets it."""
    # A savepoint: a missing table must not abort the shop's transaction on PostgreSQL.
    with transaction.atomic(using=alias):
        value: uuid.UUID = (
            Installation.objects.using(alias).values_list("event_id_namespace", flat=True).get()
        )
    return value


@cache
def _warn_unmigrated(alias: str) -> None:
    logger.warning(
        "django-capi: no installation row on database %r: run `manage.py migrate django_capi "
        "--database %s`. Event ids use the fixed namespace of earlier versions until then.",
        alias,
        alias,
    )


def ensure_installation(*, using: str, apps: Apps = global_apps, **kwargs: Any) -> None:
    """``post_migrate`` receiver: give database ``using`` its installation row if it has none."""
    try:
        installation = apps.get_model("django_capi", "Installation")
        outbox = apps.get_model("django_capi", "OutboxEvent")
    except LookupError:
        return  # migrated back before the installation table
    if not router.allow_migrate_model(using, installation):
        return
    if not installation.objects.using(using).exists():
        # Upgrade safety: an outbox with rows was filled under the fixed namespace. Its rows,
        # the Pixel events already rendered, and the next save of an order already recorded
        # must keep their ids, or Meta would count those conversions twice.
        upgraded = outbox.objects.using(using).exists()
        namespace = LEGACY_EVENT_ID_NAMESPACE if upgraded else uuid.uuid4()
        installation.objects.using(using).get_or_create(
            id=1, defaults={"event_id_namespace": namespace}
        )
    stored_namespace.cache_clear()
    _warn_unmigrated.cache_clear()
