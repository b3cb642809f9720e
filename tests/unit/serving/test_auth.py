"""pipelines/serving/auth.py: which bearer tokens ApiKeys accepts, and which settings refuse to start.

Settings that configure keys but give none usable must refuse (KeyConfigError, one line that
never holds a key): a typo must never open the service. Serving open takes API_AUTH=off.
"""

import pytest

from pipelines.serving.auth import ApiKeys, KeyConfigError, bearer_token

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
    "älpha",  # not ASCII: simply no match
    b"alpha\xff",  # raw header bytes that are not ASCII
    b"\xe2\x82\xac",
]


def assert_exactly(keys, accepted):
    for key in accepted:
        assert keys.allows(key), key
        assert keys.allows(key.encode()), key  # raw header bytes, as the middleware passes them
    for token in NEAR_MISSES:
        assert not keys.allows(token), repr(token)


def test_api_key_is_comma_separated_stripped_and_empty_items_dropped():
    keys = ApiKeys.from_env({"API_KEY": " alpha ,beta-2,, ,\tgamma\t,"})
    assert keys.enabled and keys.mode == "on"
    assert_exactly(keys, ["alpha", "beta-2", "gamma"])


def test_a_single_api_key():
    keys = ApiKeys.from_env({"API_KEY": "s3cret"})
    assert keys.allows("s3cret")
    for token in (None, "", "s3cre", "3cret", "s3cret ", "s3cret2", "S3CRET"):
        assert not keys.allows(token), repr(token)


def test_api_key_file_has_one_key_per_line_and_ignores_blank_and_comment_lines(tmp_path):
    path = tmp_path / "keys"
    path.write_text(
        "# rotated 2024-05: the old key goes next month\nalpha\n  beta-2  \n\n   \n  # gamma-old\ngamma\r\n"
    )
    keys = ApiKeys.from_env({"API_KEY_FILE": str(path)})
    assert_exactly(keys, ["alpha", "beta-2", "gamma"])
    for comment in ("# rotated 2024-05: the old key goes next month", "# gamma-old", "#", "gamma-old"):
        assert not keys.allows(comment), comment


def test_api_key_file_takes_precedence_over_api_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text("from-file\n")
    keys = ApiKeys.from_env({"API_KEY_FILE": str(path), "API_KEY": "from-env"})
    assert keys.allows("from-file")
    assert not keys.allows("from-env")


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.delenv("API_KEY_FILE", raising=False)
    monkeypatch.delenv("API_AUTH", raising=False)
    monkeypatch.setenv("API_KEY", "env-key")
    keys = ApiKeys.from_env()
    assert keys.allows("env-key")
    assert not keys.allows("other")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "no API key"),
        ({"API_KEY": ""}, "API_KEY holds no key"),
        ({"API_KEY": " , ,"}, "API_KEY holds no key"),
        ({"API_KEY": "\t"}, "API_KEY holds no key"),
        ({"API_KEY_FILE": ""}, "names no file"),
        ({"API_KEY_FILE": "", "API_KEY": "k"}, "names no file"),  # a set file setting is never skipped
        ({"API_AUTH": "no"}, "API_AUTH"),
        ({"API_AUTH": "off", "API_KEY": "k"}, "choose one"),
    ],
    ids=[
        "unset",
        "empty",
        "only-separators",
        "blank",
        "empty-file-setting",
        "empty-file-beside-key",
        "unknown-auth-setting",
        "off-and-keys",
    ],
)
def test_settings_without_a_usable_key_refuse_to_start(env, says):
    with pytest.raises(KeyConfigError, match=says) as refused:
        ApiKeys.from_env(env)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "text",
    ["", "\n   \n", "# only a comment\n", "# one\n#two\n\n"],
    ids=["empty", "blank", "one-comment", "comments-and-blanks"],
)
def test_a_key_file_with_no_key_refuses_to_start(tmp_path, text):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeyConfigError, match="API_KEY_FILE holds no key"):
        ApiKeys.from_env({"API_KEY_FILE": str(path), "API_KEY": "ignored"})


def test_a_missing_or_unreadable_key_file_refuses_to_start(tmp_path):
    with pytest.raises(KeyConfigError, match="No such file"):
        ApiKeys.from_env({"API_KEY_FILE": str(tmp_path / "absent")})
    with pytest.raises(KeyConfigError, match="cannot be read"):
        ApiKeys.from_env({"API_KEY_FILE": str(tmp_path)})  # a folder
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe key")
    with pytest.raises(KeyConfigError, match="cannot be read"):
        ApiKeys.from_env({"API_KEY_FILE": str(binary)})


@pytest.mark.parametrize("bad", ["clé-secrète", "tab\tinside", "space inside", "bell\x07", "nul\x00x"])
def test_a_key_that_is_not_visible_ascii_refuses_to_start_without_showing_it(tmp_path, bad):
    with pytest.raises(KeyConfigError, match="key 2 has a character") as refused:
        ApiKeys.from_env({"API_KEY": f"good,{bad}"})
    assert bad not in str(refused.value)
    path = tmp_path / "keys"
    path.write_text(f"# header\ngood\n{bad}\n")
    with pytest.raises(KeyConfigError, match="key 2 has a character"):
        ApiKeys.from_env({"API_KEY_FILE": str(path)})


@pytest.mark.parametrize("setting", ["off", "OFF", " off "])
def test_serving_without_keys_takes_api_auth_off(setting):
    keys = ApiKeys.from_env({"API_AUTH": setting})
    assert keys.enabled is False and keys.mode == "off"
    for token in (None, "", "anything", b"\xff"):
        assert keys.allows(token), repr(token)


def test_api_auth_on_still_needs_keys():
    assert ApiKeys.from_env({"API_AUTH": "on", "API_KEY": "k"}).allows("k")
    with pytest.raises(KeyConfigError):
        ApiKeys.from_env({"API_AUTH": "on"})


def test_the_constructor_refuses_an_empty_list_so_an_empty_token_never_matches():
    keys = ApiKeys(["", "k"])
    assert keys.allows("k")
    assert not keys.allows("") and not keys.allows(None) and not keys.allows(b"")
    with pytest.raises(KeyConfigError):
        ApiKeys(["", ""])


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"Authorization", b"bearer abc")], b"abc"),  # the scheme is case-insensitive
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"abc")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"authorization", b"Bearer \xff\xfe")], b"\xff\xfe"),  # compared as bytes: no match, no error
        ([(b"host", b"x")], None),
        ([], None),
    ],
)
def test_bearer_token_reads_the_raw_header(headers, token):
    assert bearer_token(headers) == token
