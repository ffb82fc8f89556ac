"""The README's examples are the code the tests run."""

import doctest
import hashlib
import hmac
import os
import re
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.db import transaction
from django.test import RequestFactory, override_settings

from django_capi import OutboxEvent, browser_context, checks, registry
from django_capi.conf import capi_settings
from tests.shop.models import Order

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FBC = "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"


BLOCKS = re.findall(r"^```([^\n]*)\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE)
PYTHON_BLOCKS = [block for language, block in BLOCKS if language == "python"]

#: How each Python block of the README is proven to work when pasted, by its first line.
CHECKED_BY = {
    "# settings.py": "test_the_settings_block_runs_with_or_without_the_token_variable",
    "# shop/capi.py: django-capi finds this module in every installed app, like admin.py.": (
        "test_the_quickstart_capi_module_is_the_example_shops"
    ),
    '>>> order.status = "paid"; order.save()': (
        "test_the_quickstart_doctest_passes_in_the_example_shop"
    ),
    "MIDDLEWARE = [": "test_the_middleware_block_satisfies_the_checks",
    "from django_capi import ModelEvent, browser_context, register": (
        "test_the_stored_context_block_runs"
    ),
    "DJANGO_CAPI = {": "test_the_consent_block_extends_the_quickstart_settings",
    "from django_capi import send_event": "test_the_send_event_block_records_an_event",
    "# Beyond the website: an app purchase, a WhatsApp lead, a store sale, a CRM lead stage": (
        "test_the_beyond_the_website_block_delivers_every_event"
    ),
    ">>> from django_capi import normalize_user_data": (
        "test_the_normalization_example_prints_what_the_readme_says"
    ),
    "# proj/celery.py: the usual Django setup": "test_the_celery_blocks_make_a_working_project",
    "# proj/__init__.py: loads the app in every process, web included (without it the web": (
        "test_the_celery_blocks_make_a_working_project"
    ),
    "# settings.py, beside DJANGO_CAPI": "test_the_celery_blocks_make_a_working_project",
    "# shop/tests/test_capi.py": "test_the_readme_testing_example_passes_in_the_example_shop",
    "# settings.py: a second brand with a pixel of its own": (
        "test_the_several_pixels_blocks_send_each_event_to_its_pixel"
    ),
    "from django_capi import ModelEvent, register, send_event": (
        "test_the_several_pixels_blocks_send_each_event_to_its_pixel"
    ),
    ">>> from django_capi.client import appsecret_proof": (
        "test_the_app_secret_example_prints_metas_proof"
    ),
}


def code_block_starting_with(first_line: str) -> str:
    exact = [block for block in PYTHON_BLOCKS if block.splitlines()[0] == first_line]
    for block in exact or PYTHON_BLOCKS:
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no Python block starting with {first_line!r}")


def run_block(first_line: str, namespace: dict[str, object]) -> dict[str, object]:
    exec(compile(code_block_starting_with(first_line), "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def test_every_python_block_of_the_readme_is_run_or_compared():
    first_lines = [block.splitlines()[0] for block in PYTHON_BLOCKS]
    assert len(first_lines) == len(set(first_lines)), "two blocks start alike: tell them apart"
    assert set(first_lines) == set(CHECKED_BY), "a new README block needs a test in this module"
    assert set(CHECKED_BY.values()) <= set(globals())


def test_the_settings_block_runs_with_or_without_the_token_variable(monkeypatch):
    monkeypatch.delenv("CAPI_ACCESS_TOKEN", raising=False)
    settings = run_block("# settings.py", {"DATABASES": {"default": {}}})
    assert settings["DATABASES"] == {"default": {"ATOMIC_REQUESTS": True}}
    assert "django_capi" in settings["INSTALLED_APPS"]
    with override_settings(DJANGO_CAPI=settings["DJANGO_CAPI"]):
        assert capi_settings().access_token is None  # E002 then says where to set it
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "from-the-environment")
    with override_settings(DJANGO_CAPI=settings["DJANGO_CAPI"]):
        conf = capi_settings()
    assert (conf.pixel_id, conf.access_token) == ("1234567890123456", "from-the-environment")


def test_the_middleware_block_satisfies_the_checks():
    middleware = run_block("MIDDLEWARE = [", {})["MIDDLEWARE"]
    with override_settings(MIDDLEWARE=middleware):
        ids = {message.id for message in run_checks(tags=[checks.TAG])}
    assert not ids & {"django_capi.W001", "django_capi.W002"}


@pytest.mark.django_db
def test_the_stored_context_block_runs(isolated_registry):
    registry._registry.pop(Order, None)  # the block declares the test shop's Purchase itself
    namespace = run_block("from django_capi import ModelEvent, browser_context", {"Order": Order})
    request = RequestFactory().get("/checkout/", HTTP_USER_AGENT="UA/1")
    request.COOKIES["_fbc"] = FBC
    stored = browser_context(request)
    order = Order.objects.create(email="a@example.com", browser=stored)
    assert namespace["OrderPaid"]().request_context(order) == stored
    assert stored["fbc"] == FBC


def test_the_consent_block_extends_the_quickstart_settings():
    quickstart = run_block("# settings.py", {"DATABASES": {"default": {}}})["DJANGO_CAPI"]
    extended = run_block("DJANGO_CAPI = {", {"DJANGO_CAPI": quickstart})["DJANGO_CAPI"]
    assert extended["PIXEL_ID"] == quickstart["PIXEL_ID"]
    with override_settings(DJANGO_CAPI={**extended, "CONSENT": lambda request: True}):
        assert capi_settings().limited_data_use == {"country": 1, "state": 1000}
    assert isinstance(extended["CONSENT"], str)


@pytest.mark.django_db
def test_the_send_event_block_records_an_event():
    request = RequestFactory().get("/products/1/", HTTP_USER_AGENT="UA/1")
    request.user = User(pk=7)
    product = SimpleNamespace(sku="sku-1", price=Decimal("9.90"))
    run_block("from django_capi import send_event", {"request": request, "product": product})
    row = OutboxEvent.objects.get(event_name="AddToCart")
    assert row.status == "pending", row.last_error
    assert row.payload["custom_data"]["content_ids"] == ["sku-1"]


@pytest.mark.django_db(transaction=True)
def test_the_beyond_the_website_block_delivers_every_event(capi_graph):
    from django.utils import timezone

    from django_capi.delivery import drain

    sale = SimpleNamespace(
        sold_at=timezone.now() - timedelta(days=40),
        number=1042,
        email="Shopper@Example.com",
        phone="+1 650 555 1212",
        total=Decimal("25.00"),
    )
    run_block(
        "# Beyond the website: an app purchase, a WhatsApp lead, a store sale, a CRM lead stage",
        {
            "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
            "sale": sale,
            "lead": SimpleNamespace(meta_lead_id=525645896321548),
        },
    )
    rows = OutboxEvent.objects.order_by("id")
    assert [(row.action_source, row.status, row.warnings) for row in rows] == [
        ("app", "pending", []),
        ("business_messaging", "pending", []),
        ("physical_store", "pending", []),
        ("system_generated", "pending", []),
    ], [row.last_error for row in rows]
    drain()
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"delivered"}
    received = {event.data["action_source"]: event.data for event in capi_graph.received_events()}
    assert received["app"]["app_data"]["extinfo"][:5] == ["i2", "com.example.shop", "", "", "17.4"]
    assert received["business_messaging"]["messaging_channel"] == "whatsapp"
    assert received["physical_store"]["custom_data"]["order_id"] == "1042"
    assert received["system_generated"]["user_data"] == {"lead_id": 525645896321548}


def test_the_quickstart_capi_module_is_the_example_shops():
    block = code_block_starting_with("# shop/capi.py")
    assert block == (ROOT / "example_project" / "shop" / "capi.py").read_text()


def test_the_normalization_example_prints_what_the_readme_says():
    block = code_block_starting_with(">>> from django_capi import normalize_user_data")
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    result = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE).run(test)
    assert result.failed == 0
    assert result.attempted == 2


@pytest.mark.slow
def test_the_readme_testing_example_passes_in_the_example_shop(tmp_path):
    block = code_block_starting_with("# shop/tests/test_capi.py")
    test_file = tmp_path / "test_capi.py"
    test_file.write_text(block)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": "sqlite:///:memory:",
        "SHOP_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": str(ROOT / "example_project"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def example_shop(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the example project's settings, on a fresh SQLite file."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "example_project",
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
            "SHOP_VAR_DIR": str(tmp_path / "var"),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_the_quickstart_doctest_passes_in_the_example_shop(tmp_path):
    script = """
import doctest, os
import django
django.setup()
from django.core.management import call_command
from shop.models import Order
call_command("migrate", verbosity=0)
order = Order.objects.create(email="John_Smith@gmail.com", total=12, browser={
    "client_user_agent": "Mozilla/5.0", "fbp": "fb.1.1596403881668.1116446470"})
test = doctest.DocTestParser().get_doctest(os.environ["BLOCK"], {"order": order}, "README", None, 0)
result = doctest.DocTestRunner().run(test)
assert result.failed == 0 and result.attempted == 4, result
"""
    block = code_block_starting_with('>>> order.status = "paid"; order.save()')
    result = example_shop(script, tmp_path, BLOCK=block)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_celery_blocks_make_a_working_project(tmp_path):
    """The Quickstart settings, the Celery module, the package's __init__.py and the Celery
    settings, pasted into a new project: the web process wakes drainers through Celery."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "__init__.py").write_text(code_block_starting_with("# proj/__init__.py"))
    (project / "celery.py").write_text(code_block_starting_with("# proj/celery.py"))
    (project / "settings.py").write_text(
        'SECRET_KEY = "readme"\n'
        f'DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": '
        f'"{tmp_path / "db.sqlite3"}"}}}}\n'
        + code_block_starting_with("# settings.py")
        + 'INSTALLED_APPS.insert(0, "django.contrib.auth")  # a project\'s usual apps ("# …")\n'
        + code_block_starting_with("# settings.py, beside DJANGO_CAPI")
    )
    script = (
        "import django; django.setup()\n"
        "from celery import current_app\n"
        "current_app.loader.import_default_modules()  # what a worker does at start\n"
        "from django_capi.conf import capi_settings\n"
        "print(capi_settings().wake, current_app.main, "
        "'django_capi.drain_outbox' in current_app.tasks)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAPI_")}
    env |= {"DJANGO_SETTINGS_MODULE": "proj.settings", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["celery", "proj", "True"]


@pytest.mark.django_db(transaction=True)
def test_the_several_pixels_blocks_send_each_event_to_its_pixel(isolated_registry, monkeypatch):
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "default-token")
    monkeypatch.setenv("CAPI_BRAND_B_TOKEN", "brand-b-token")
    monkeypatch.delenv("CAPI_BRAND_B_APP_SECRET", raising=False)
    settings = run_block("# settings.py: a second brand with a pixel of its own", {})
    registry._registry.pop(Order, None)  # the block declares the test shop's Purchase itself
    with override_settings(DJANGO_CAPI={**settings["DJANGO_CAPI"], "WAKE": "none"}):
        conf = capi_settings()
        brand_b = conf.pixels["6543210987654321"]
        assert (brand_b.access_token, brand_b.app_secret) == ("brand-b-token", None)
        assert conf.access_token == "default-token"
        namespace = run_block(
            "from django_capi import ModelEvent, register, send_event", {"Order": Order}
        )
        with transaction.atomic():
            Order.objects.create(email="a@example.com", status="paid", currency="USD")
            Order.objects.create(email="b@example.com", status="paid", currency="EUR")
            request = RequestFactory().get("/newsletter/", HTTP_USER_AGENT="UA/1")
            signup = namespace["newsletter_signup"](request, "c@example.com")
    purchases = OutboxEvent.objects.filter(event_name="Purchase").order_by("pk")
    assert [(row.pixel_id, row.status) for row in purchases] == [
        ("6543210987654321", "pending"),
        ("1234567890123456", "pending"),
    ]
    assert (signup.pixel_id, signup.status) == ("6543210987654321", "pending")


def test_the_app_secret_example_prints_metas_proof():
    block = code_block_starting_with(">>> from django_capi.client import appsecret_proof")
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    result = doctest.DocTestRunner().run(test)
    assert (result.failed, result.attempted) == (0, 2)
    expected = hmac.new(b"app-secret", b"access-token", hashlib.sha256).hexdigest()
    assert expected in block
