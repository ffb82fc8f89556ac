import pytest
from django.test import override_settings

from django_capi.conf import capi_settings
from django_capi.exceptions import CapiConfigurationError


def test_defaults_fill_what_the_dict_leaves_out():
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "42"}):
        conf = capi_settings()
    assert conf.pixel_id == "42"
    assert conf.graph_api_url == "https://graph.facebook.com"
    assert conf.api_version == "v26.0"
    assert conf.batch_size == 1000
    assert conf.events_url("42") == "https://graph.facebook.com/v26.0/42/events"


def test_override_settings_clears_the_cache():
    assert capi_settings().pixel_id == "1234567890"
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "777"}):
        assert capi_settings().pixel_id == "777"
    assert capi_settings().pixel_id == "1234567890"


def test_unknown_key_is_an_error_naming_it():
    with (
        override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "ACCES_TOKEN": "x"}),
        pytest.raises(CapiConfigurationError, match="'ACCES_TOKEN'"),
    ):
        capi_settings()


def test_environment_fills_absent_keys(monkeypatch):
    monkeypatch.setenv("CAPI_PIXEL_ID", "555")
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "env-token")
    monkeypatch.setenv("CAPI_TEST_EVENT_CODE", "TEST123")
    monkeypatch.setenv("CAPI_GRAPH_API_URL", "http://127.0.0.1:9999/")
    with override_settings(DJANGO_CAPI={}):
        conf = capi_settings()
    assert (conf.pixel_id, conf.access_token, conf.test_event_code) == (
        "555",
        "env-token",
        "TEST123",
    )
    assert conf.graph_api_url == "http://127.0.0.1:9999"


def test_the_dict_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CAPI_PIXEL_ID", "555")
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "666"}):
        assert capi_settings().pixel_id == "666"


def test_the_token_stays_out_of_repr_and_errors():
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "ACCESS_TOKEN": "EAAsecret"}):
        assert "EAAsecret" not in repr(capi_settings())
    with (
        override_settings(DJANGO_CAPI={"ACCESS_TOKEN": 12345}),
        pytest.raises(CapiConfigurationError) as error,
    ):
        capi_settings()
    assert "12345" not in str(error.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BATCH_SIZE", 1001),
        ("BATCH_SIZE", 0),
        ("BATCH_SIZE", "100"),
        ("MAX_ATTEMPTS", 0),
        ("API_VERSION", "25"),
        ("GRAPH_API_URL", "graph.facebook.com"),
        ("GRAPH_API_URL", "https://graph.facebook.com/v25.0"),
        ("PIXEL_ID", "pixel-1"),
        ("DEFAULT_PHONE_REGION", "XX"),
    ],
)
def test_bad_values_name_the_key(key, value):
    with (
        override_settings(DJANGO_CAPI={key: value}),
        pytest.raises(CapiConfigurationError, match=key),
    ):
        capi_settings()


def test_phone_region_is_uppercased_and_pixel_id_may_be_an_int():
    with override_settings(DJANGO_CAPI={"DEFAULT_PHONE_REGION": "de", "PIXEL_ID": 99}):
        conf = capi_settings()
    assert (conf.default_phone_region, conf.pixel_id) == ("DE", "99")


def test_a_lease_must_outlive_the_slowest_request():
    too_short = {"LEASE_SECONDS": 10, "CONNECT_TIMEOUT": 1.5, "READ_TIMEOUT": 5.0}
    with (
        override_settings(DJANGO_CAPI=too_short),
        pytest.raises(CapiConfigurationError, match="LEASE_SECONDS"),
    ):
        capi_settings()
    with override_settings(DJANGO_CAPI={**too_short, "LEASE_SECONDS": 14}):
        assert capi_settings().lease_seconds == 14


def test_the_cookie_domain_must_be_a_domain():
    with (
        override_settings(DJANGO_CAPI={"COOKIE_DOMAIN": "not a domain"}),
        pytest.raises(CapiConfigurationError, match="COOKIE_DOMAIN"),
    ):
        capi_settings()
    with override_settings(DJANGO_CAPI={"COOKIE_DOMAIN": ".example.com"}):
        assert capi_settings().cookie_domain == ".example.com"
