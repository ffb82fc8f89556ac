from django_capi.text import REPLACEMENT, is_storable, storable, storable_json


def test_nul_and_lone_surrogates_become_the_replacement_character() -> None:
    assert storable("a\x00b") == f"a{REPLACEMENT}b"
    assert storable("x\ud800y\udfff") == f"x{REPLACEMENT}y{REPLACEMENT}"
    assert storable("josé 정 \u200f") == "josé 정 \u200f"
    assert not is_storable("\x00")
    assert is_storable(storable("\udc80\x00"))


def test_json_is_cleaned_keys_and_all() -> None:
    value = {"a\x00": ["\ud83d", {"k": "v\x00"}], "n": 1, "t": ("x\x00",)}
    assert storable_json(value) == {
        f"a{REPLACEMENT}": [REPLACEMENT, {"k": f"v{REPLACEMENT}"}],
        "n": 1,
        "t": [f"x{REPLACEMENT}"],
    }
