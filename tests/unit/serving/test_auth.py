"""pipelines/serving/auth.py: which bearer tokens ApiKeys accepts, from API_KEY or API_KEY_FILE."""

import pytest

from pipelines.serving.auth import ApiKeys

# Tokens that resemble the configured keys "alpha", "beta-2", "gamma" but are not one of them.
NEAR_MISSES = [
    None,  # no Authorization header
    "",
    "alph",  # a prefix
    "lpha",  # a suffix
    "alphaa",  # the key, extended
    "xalpha",
    "ALPHA",  # keys are case-sensitive
    " alpha",  # the caller's whitespace is not stripped
    "alpha\n",
    "alpha,beta-2",  # the raw API_KEY value is not itself a key
    "beta",
    "gamm",
    "delta",
]


def test_api_key_is_comma_separated_stripped_and_empty_items_dropped():
    keys = ApiKeys.from_env({"API_KEY": " alpha ,beta-2,, ,\tgamma\t,"})
    assert keys.enabled
    for key in ("alpha", "beta-2", "gamma"):
        assert keys.allows(key), key
    for token in NEAR_MISSES:
        assert not keys.allows(token), repr(token)


def test_a_single_api_key():
    keys = ApiKeys.from_env({"API_KEY": "s3cret"})
    assert keys.enabled
    assert keys.allows("s3cret")
    for token in (None, "", "s3cre", "3cret", "s3cret ", "s3cret2", "S3CRET"):
        assert not keys.allows(token), repr(token)


def test_api_key_file_has_one_key_per_line_stripped_and_blank_lines_dropped(tmp_path):
    path = tmp_path / "keys"
    path.write_text("alpha\n  beta-2  \n\n   \ngamma\r\n")
    keys = ApiKeys.from_env({"API_KEY_FILE": str(path)})
    assert keys.enabled
    for key in ("alpha", "beta-2", "gamma"):
        assert keys.allows(key), key
    for token in NEAR_MISSES:
        assert not keys.allows(token), repr(token)


def test_api_key_file_takes_precedence_over_api_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text("from-file\n")
    keys = ApiKeys.from_env({"API_KEY_FILE": str(path), "API_KEY": "from-env"})
    assert keys.allows("from-file")
    assert not keys.allows("from-env")


def test_an_empty_api_key_file_setting_falls_back_to_api_key():
    keys = ApiKeys.from_env({"API_KEY_FILE": "", "API_KEY": "from-env"})
    assert keys.allows("from-env")
    assert not keys.allows("other")


def test_a_missing_api_key_file_fails_loudly_instead_of_opening_the_service(tmp_path):
    with pytest.raises(FileNotFoundError):
        ApiKeys.from_env({"API_KEY_FILE": str(tmp_path / "absent")})


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.delenv("API_KEY_FILE", raising=False)
    monkeypatch.setenv("API_KEY", "env-key")
    keys = ApiKeys.from_env()
    assert keys.allows("env-key")
    assert not keys.allows("other")


@pytest.mark.parametrize(
    "env",
    [{}, {"API_KEY": ""}, {"API_KEY": " , ,"}, {"API_KEY_FILE": ""}],
    ids=["unset", "empty", "only-separators", "empty-file-setting"],
)
def test_no_keys_configured_disables_auth_and_allows_every_request_todays_behaviour(env):
    keys = ApiKeys.from_env(env)
    assert keys.enabled is False
    for token in (None, "", "anything", "alpha"):
        assert keys.allows(token), repr(token)


def test_an_empty_or_blank_key_file_also_disables_auth_todays_behaviour(tmp_path):
    path = tmp_path / "keys"
    path.write_text("\n   \n")
    keys = ApiKeys.from_env({"API_KEY_FILE": str(path), "API_KEY": "ignored"})
    assert keys.enabled is False
    assert keys.allows(None)
    assert keys.allows("ignored")


def test_constructor_drops_empty_keys_so_an_empty_token_never_matches():
    keys = ApiKeys(["", "k"])
    assert keys.enabled
    assert keys.allows("k")
    assert not keys.allows("")
    assert not keys.allows(None)
