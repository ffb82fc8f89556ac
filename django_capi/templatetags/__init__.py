"""Django's template engine imports every tag library of every installed app. Without an app
the models need (``apps.REQUIRED_APPS``), django-capi loads no models and reports E007, so
its libraries, which need the models, are hidden: `manage.py check` says what is missing
instead of failing while it builds the engines."""

from ..apps import missing_apps

if missing_apps():
    __path__ = []
