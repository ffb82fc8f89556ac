"""System checks: setups that lose or spoil events without an exception anywhere.

``manage.py check`` runs them (``--tag django_capi`` for these alone) and so does
``capi_doctor``. The ids are stable forever: silence one with ``SILENCED_SYSTEM_CHECKS``.

Errors (events cannot be recorded or delivered):

- ``django_capi.E001``: no pixel id (``PIXEL_ID`` or ``CAPI_PIXEL_ID``).
- ``django_capi.E002``: no access token (``ACCESS_TOKEN`` or ``CAPI_ACCESS_TOKEN``), or a pixel of
  ``PIXELS`` without its ``ACCESS_TOKEN`` (one message per pixel).
- ``django_capi.E003``: ``DJANGO_CAPI`` fails validation (a bad value or an unknown key).
- ``django_capi.E004``: a registered model is written on a database without the outbox table,
  so its events cannot be recorded in its transaction.
- ``django_capi.E005``: ``send_event`` writes on a database without the outbox table (the
  router sends ``OutboxEvent`` writes where it does not migrate it).
- ``django_capi.E006``: a ``ModelEvent`` whose ``action_source`` needs a hook it does not
  define (``"app"`` without ``app_data()``, ``"business_messaging"`` without
  ``messaging_channel()``): Meta rejects every such event, so each row would fail.
- ``django_capi.E007``: ``django.contrib.contenttypes`` is not installed: the models cannot
  load, so django-capi loads nothing else and this is its only check (``apps.py``). Auth,
  admin and sessions are optional: the checks run without them.

Warnings (events go out, but worse than they could):

- ``django_capi.W001``: ``CapiMiddleware`` is not installed: the Pixel's tags and the server
  events then lack fbc, fbp, IP and user agent unless the integrator passes them.
- ``django_capi.W002``: ``CapiMiddleware`` comes before ``SessionMiddleware`` or
  ``AuthenticationMiddleware``.
- ``django_capi.W003``: ``TEST_EVENT_CODE`` is set while ``DEBUG`` is off: production events
  land in Test Events instead of counting.
- ``django_capi.W004``: Celery workers drain an outbox on SQLite, which serializes every claim.
- ``django_capi.W005``: Celery wake-ups with a per-process default cache, which workers cannot
  clear.
- ``django_capi.W007``: ``CELERY_BROKER_URL`` is set but no Celery app with a broker is loaded
  in this process (the project's ``__init__.py`` does not import it), so ``WAKE`` resolved to
  ``"none"``: commits wake no drainer and events wait for the sweep, if there is one.
- ``django_capi.W006``: ``API_VERSION`` is no longer served by Meta, or stops being served
  within 90 days: every request will then fail with code 2635 and the circuit opens.
- ``django_capi.W008``: on MySQL/MariaDB, a column the outbox compares for identity (the event
  key, the source object's id, the pixel ids) has a collation that ignores case, accents or
  trailing spaces: two events whose ids differ only so are stored as one, and Meta never gets
  the second. Its migration sets them exact; an ``ALTER`` since then may have undone it. Only
  with databases to check (``check --database``, ``migrate``, ``capi_doctor``).

Checks that need the settings are skipped while ``E003`` stands: its message says what to fix
first. The lease/timeout relation is part of the settings' own validation (``E003``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import API_VERSIONS, SETTING_NAME, CapiSettings, api_version_end, capi_settings
from .exceptions import CapiConfigurationError
from .models import DeliveryAttempt, OutboxEvent, PixelState
from .outbox import databases as outbox_databases
from .registry import ModelEvent, all_events, registered_models

#: ``manage.py check --tag django_capi`` runs only these checks.
TAG = "django_capi"

CAPI_MIDDLEWARE = "django_capi.middleware.CapiMiddleware"
SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
#: Warn this long before Meta stops serving the configured API version.
API_VERSION_NOTICE = timedelta(days=90)
PER_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)

Messages = list[CheckMessage]


def _settings_or_none() -> CapiSettings | None:
    try:
        return capi_settings()
    except CapiConfigurationError:
        return None


@register(TAG)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """E001, E002, E003, W003, W006."""
    try:
        conf = capi_settings()
    except CapiConfigurationError as exc:
        return [
            Error(
                str(exc),
                hint=f"Fix {SETTING_NAME} in your settings; README.md lists every key.",
                id="django_capi.E003",
            )
        ]
    messages: Messages = []
    if conf.pixel_id is None:
        messages.append(
            Error(
                "No Meta pixel id is configured: every event is stored as failed.",
                hint=f'Set {SETTING_NAME}["PIXEL_ID"] or the CAPI_PIXEL_ID environment '
                "variable to your pixel's (dataset's) id from Events Manager.",
                id="django_capi.E001",
            )
        )
    # The top-level token is the default pixel's (or, with no pixel at all, the only one);
    # pixels of PIXELS are reported one by one below.
    if conf.access_token is None and (
        (conf.pixel_id is None and not conf.pixels)
        or (conf.pixel_id is not None and conf.pixel_id not in _own_entries())
    ):
        messages.append(
            Error(
                "No Conversions API access token is configured: Meta refuses every request.",
                hint="Set the CAPI_ACCESS_TOKEN environment variable (or "
                f'{SETTING_NAME}["ACCESS_TOKEN"]) to a token generated in Events Manager, '
                "Settings, Conversions API.",
                id="django_capi.E002",
            )
        )
    for pixel in conf.pixels.values():
        if pixel.access_token is None and pixel.pixel_id in _own_entries():
            messages.append(
                Error(
                    f"Pixel {pixel.pixel_id} has no ACCESS_TOKEN: Meta refuses its events.",
                    hint=f'Set {SETTING_NAME}["PIXELS"]["{pixel.pixel_id}"]["ACCESS_TOKEN"] to '
                    "a token generated on that pixel's Settings page in Events Manager.",
                    id="django_capi.E002",
                )
            )
    coded = [pixel.pixel_id for pixel in conf.pixels.values() if pixel.test_event_code]
    if (conf.test_event_code or coded) and not settings.DEBUG:
        which = "" if coded in ([], [conf.pixel_id]) else f" (pixels {', '.join(coded)})"
        messages.append(
            CheckWarning(
                f"TEST_EVENT_CODE is set{which} while DEBUG is off: Meta treats every event as a "
                "test event (shown in Test Events), not as a real conversion.",
                hint=f'Remove {SETTING_NAME}["TEST_EVENT_CODE"] (and CAPI_TEST_EVENT_CODE, and '
                "those in PIXELS) in production; use `manage.py capi_test_event --code …` for "
                "a one-off test.",
                id="django_capi.W003",
            )
        )
    versions: dict[str, list[str]] = {conf.api_version: []}
    for pixel in conf.pixels.values():
        versions.setdefault(pixel.api_version, []).append(pixel.pixel_id)
    for version, pixel_ids in versions.items():
        messages += _api_version_warning(version, pixel_ids, conf.pixel_id)
    return messages


def _own_entries() -> set[str]:
    """The pixel ids ``PIXELS`` names (as the settings validated them)."""
    user = getattr(settings, SETTING_NAME, None) or {}
    return {str(pixel_id) for pixel_id in user.get("PIXELS") or {}}


def _api_version_warning(version: str, pixel_ids: list[str], default: str | None) -> Messages:
    """W006 for ``version``, naming the pixels that use it when several pixels are set up."""
    end = api_version_end(version)
    today = timezone.now().date()
    if end is None or end - today > API_VERSION_NOTICE:
        return []
    ends = "has not been served since" if end <= today else "stops on"
    which = "" if pixel_ids in ([], [default]) else f" (pixels {', '.join(pixel_ids)})"
    return [
        CheckWarning(
            f"API_VERSION {version}{which} {ends} {end.isoformat()}: Meta then refuses "
            "every request (code 2635) and no event is delivered.",
            hint=f'Set {SETTING_NAME}["API_VERSION"]{" (and those in PIXELS)" if which else ""} '
            f"to {next(iter(API_VERSIONS))} (or remove it: the default is the newest version "
            "this release knows).",
            id="django_capi.W006",
        )
    ]


@register(TAG)
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """W001, W002."""
    classes = _middleware_classes()
    capi = _first_subclass(classes, CAPI_MIDDLEWARE)
    if capi is None:
        if not _capi_tags_loadable():
            return []
        return [
            CheckWarning(
                f"{CAPI_MIDDLEWARE} is not in MIDDLEWARE: the Pixel and server events lack the "
                "click id (fbc), fbp, IP address and user agent unless you pass them yourself.",
                hint=f'Add "{CAPI_MIDDLEWARE}" to MIDDLEWARE after SessionMiddleware and '
                "AuthenticationMiddleware.",
                id="django_capi.W001",
            )
        ]
    late = [
        path.rsplit(".", 1)[1]
        for path in (SESSION_MIDDLEWARE, AUTH_MIDDLEWARE)
        if (position := _first_subclass(classes, path)) is not None and position > capi
    ]
    if not late:
        return []
    return [
        CheckWarning(
            f"CapiMiddleware comes before {' and '.join(late)}: it cannot keep the browser's "
            "ids in the session nor match the signed-in user.",
            hint=f"Move {CAPI_MIDDLEWARE} after {' and '.join(late)} in MIDDLEWARE.",
            id="django_capi.W002",
        )
    ]


@register(TAG)
def check_celery(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """W004, W005, W007."""
    conf = _settings_or_none()
    if conf is None:
        return []
    if conf.wake != "celery":
        return _celery_app_not_loaded()
    messages: Messages = []
    sqlite = [alias for alias in outbox_databases() if connections[alias].vendor == "sqlite"]
    if sqlite:
        messages.append(
            CheckWarning(
                f"Celery workers drain an outbox on SQLite ({', '.join(sqlite)}): SQLite "
                "serializes every claim, so workers wait on each other and on the shop.",
                hint="Run the outbox on PostgreSQL (or MySQL) in production, or set "
                f'{SETTING_NAME}["WAKE"] = "none" and run one `capi_drain --loop`.',
                id="django_capi.W004",
            )
        )
    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if _is_subclass(_import_or_none(backend), PER_PROCESS_CACHES):
        messages.append(
            CheckWarning(
                f"The default cache ({backend.rsplit('.', 1)[-1]}) is per process: workers "
                "cannot clear the wake-up debounce, so wake-ups wait for it to expire.",
                hint='Configure a shared cache (e.g. Redis) as CACHES["default"]; see README '
                '"Running delivery".',
                id="django_capi.W005",
            )
        )
    return messages


def _celery_app_not_loaded() -> Messages:
    """W007: WAKE was left to resolve itself and a broker is configured, yet it resolved to
    "none": the Celery app that would read the broker is not loaded in this process."""
    user = getattr(settings, SETTING_NAME, None) or {}
    if not getattr(settings, "CELERY_BROKER_URL", None) or user.get("WAKE") is not None:
        return []
    return [
        CheckWarning(
            "CELERY_BROKER_URL is set but no Celery app with a broker is loaded in this "
            'process, so WAKE resolved to "none": commits queue no drain task.',
            hint="Import your Celery app in your project package's __init__.py (`from .celery "
            'import app as celery_app`), or set DJANGO_CAPI["WAKE"] = "none" if you drain with '
            "`capi_drain`.",
            id="django_capi.W007",
        )
    ]


@register(TAG)
def check_databases(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """E004, E005. Uses the routers' answers without hints: a router that shards by instance
    is not second-guessed."""
    with_outbox = set(outbox_databases())
    hint = (
        "Let your database router migrate django_capi on every database your registered "
        "models are written to (allow_migrate), then run `manage.py migrate django_capi "
        "--database ALIAS`."
    )
    messages: Messages = []
    for model in sorted(registered_models(), key=lambda model: model._meta.label):
        alias = router.db_for_write(model)
        if alias not in with_outbox:
            messages.append(
                Error(
                    f"{model._meta.label} is written to the database {alias!r}, which has no "
                    "outbox: its events cannot be recorded in the same transaction.",
                    hint=hint,
                    obj=model,
                    id="django_capi.E004",
                )
            )
    alias = router.db_for_write(OutboxEvent)
    if alias not in with_outbox:
        messages.append(
            Error(
                f"OutboxEvent writes are routed to {alias!r}, where the router does not migrate "
                "it: send_event() would fail there.",
                hint=hint,
                id="django_capi.E005",
            )
        )
    return messages


#: The columns compared for identity: the outbox's unique key, the source object's id (the
#: admin's exact search) and every pixel id (compared with each other across tables).
EXACT_COLUMNS = {
    OutboxEvent: ("pixel_id", "event_name", "event_id", "source_id"),
    DeliveryAttempt: ("pixel_id",),
    PixelState: ("pixel_id",),
}


def is_exact_collation(name: str | None) -> bool:
    """Whether a MySQL/MariaDB collation compares bytes, trailing spaces included: MariaDB's
    ``*_nopad_bin`` and MySQL 8's ``utf8mb4_0900_bin``; ``*_bin`` pads with spaces."""
    return name is not None and (name.endswith("_nopad_bin") or name == "utf8mb4_0900_bin")


@register(TAG)
def check_key_collations(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """W008. Queries only the databases Django asks about, as its own database checks do."""
    messages: Messages = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "mysql" or alias not in outbox_databases():
            continue
        try:
            loose = _loose_columns(alias)
        except DatabaseError:
            continue  # an unreachable database is reported by whatever queries it next
        if loose:
            listed = ", ".join(f"{column} ({collation})" for column, collation in loose)
            messages.append(
                CheckWarning(
                    f"On the database {alias!r} these outbox columns ignore case, accents or "
                    f"trailing spaces: {listed}. Events whose ids differ only so (Order-1, "
                    "order-1) are stored as one row and Meta never receives the second.",
                    hint=f"Run `manage.py migrate django_capi --database {alias}`: its "
                    "migrations give these columns a binary NO PAD collation. If they ran, a "
                    "later ALTER reset them: ALTER TABLE … MODIFY each column with COLLATE "
                    "utf8mb4_nopad_bin (MariaDB) or utf8mb4_0900_bin (MySQL 8).",
                    id="django_capi.W008",
                )
            )
    return messages


def _loose_columns(alias: str) -> list[tuple[str, str]]:
    """``table.column`` and collation of each identity column that is not exact; none while
    the tables do not exist yet (``migrate`` creates them exact)."""
    # None of these fields sets db_column: the column is the field's name.
    wanted = {
        (model._meta.db_table, name) for model, names in EXACT_COLUMNS.items() for name in names
    }
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN %s",
            [tuple(sorted({table for table, _ in wanted}))],
        )
        rows = cursor.fetchall()
    return sorted(
        (f"{table}.{column}", collation)
        for table, column, collation in rows
        if (table, column) in wanted and not is_exact_collation(collation)
    )


#: The hook each action source cannot do without: Meta rejects the event otherwise [APPD],
#: [BMSG].
REQUIRED_HOOKS = {"app": "app_data", "business_messaging": "messaging_channel"}


@register(TAG)
def check_model_events(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
    """E006."""
    messages: Messages = []
    for event in all_events():
        hook = REQUIRED_HOOKS.get(event.action_source)
        if hook is None or getattr(type(event), hook) is not getattr(ModelEvent, hook):
            continue
        name = type(event).__qualname__
        messages.append(
            Error(
                f"{name} has action_source {event.action_source!r} but no {hook}() hook: Meta "
                f"requires {hook} for these events, so every one would fail.",
                hint=f"Define {name}.{hook}(self, instance) (README: Beyond the website).",
                obj=type(event),
                id="django_capi.E006",
            )
        )
    return messages


def capi_middleware_installed() -> bool:
    """Whether ``MIDDLEWARE`` holds ``CapiMiddleware`` (or a subclass of it)."""
    return _first_subclass(_middleware_classes(), CAPI_MIDDLEWARE) is not None


def _middleware_classes() -> list[type | None]:
    return [_import_or_none(path) for path in settings.MIDDLEWARE]


def _capi_tags_loadable() -> bool:
    """Whether a template could ``{% load capi %}`` (always, with the app installed and
    Django templates)."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    from .templatetags.capi import register as library

    try:
        all_engines = engines.all()
    except ImproperlyConfigured:
        return True  # Django's own checks report TEMPLATES; assume the tags are used
    for engine in all_engines:
        if isinstance(engine, DjangoTemplates):
            loadable = engine.engine.template_libraries.values()
            if (
                any(lib is library for lib in loadable)
                or library in engine.engine.template_builtins
            ):
                return True
    return False


def _import_or_none(path: str) -> type | None:
    # A path that does not import is another check's business (Django fails loudly on it),
    # and so is one whose models' app is not installed (AuthenticationMiddleware without
    # django.contrib.auth: Django's RuntimeError).
    try:
        imported = import_string(path)
    except (ImportError, RuntimeError):
        return None
    return imported if isinstance(imported, type) else None


def _is_subclass(klass: type | None, paths: Sequence[str]) -> bool:
    bases = [base for base in map(_import_or_none, paths) if base is not None]
    return klass is not None and any(issubclass(klass, base) for base in bases)


def _first_subclass(classes: Sequence[type | None], path: str) -> int | None:
    for position, klass in enumerate(classes):
        if _is_subclass(klass, [path]):
            return position
    return None
