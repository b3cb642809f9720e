"""The trust rules for model files: digests, confined paths, MLmodel checks, skops loading.

Oracles are independent of the code under test: hashlib for digests, hand-written MLmodel
dicts for the checks, and a pickle payload that would write a marker file if it ever ran.
"""

import hashlib
import os
import pickle

import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from pipelines.serving import trust


def mlmodel(**sklearn):
    conf = {"pickled_model": "model.skops", "serialization_format": "skops", "skops_trusted_types": []}
    return {
        "flavors": {
            "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
            "sklearn": {**conf, **sklearn},
        }
    }


def test_read_verified_returns_the_bytes_it_checked(tmp_path):
    path = tmp_path / "model.skops"
    path.write_bytes(b"payload")
    assert trust.read_verified(path, hashlib.sha256(b"payload").hexdigest()) == b"payload"
    assert trust.sha256_bytes(b"payload") == hashlib.sha256(b"payload").hexdigest()


@pytest.mark.parametrize("expected", [hashlib.sha256(b"other").hexdigest(), None, ""])
def test_read_verified_refuses_a_wrong_or_missing_digest(tmp_path, expected):
    path = tmp_path / "model.skops"
    path.write_bytes(b"payload")
    with pytest.raises(trust.Untrusted, match=r"^registry version 3: model\.skops "):
        trust.read_verified(path, expected, "registry version 3")


def test_read_verified_refuses_a_missing_file(tmp_path):
    with pytest.raises(trust.Untrusted, match="cannot be read"):
        trust.read_verified(tmp_path / "gone.onnx", "ab" * 32)


def test_confined_accepts_a_plain_name_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    assert trust.confined(tmp_path, "sub/model.skops") == (tmp_path / "sub" / "model.skops").resolve()


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("../model.skops", "leaves its folder"),
        ("sub/../../x", "leaves its folder"),
        ("/etc/passwd", "absolute"),
        ("C:\\evil.skops", "absolute"),
        ("..\\evil.skops", "leaves its folder"),
        ("", "not a relative file name"),
        (None, "not a relative file name"),
        (["model.skops"], "not a relative file name"),
    ],
)
def test_confined_refuses_paths_out_of_the_folder(tmp_path, relative, reason):
    with pytest.raises(trust.Untrusted, match=reason):
        trust.confined(tmp_path, relative, "registry version 1")


def test_confined_refuses_a_symlink_that_resolves_outside(tmp_path):
    outside = tmp_path / "outside.skops"
    outside.write_bytes(b"x")
    folder = tmp_path / "download"
    folder.mkdir()
    os.symlink(outside, folder / "model.skops")
    with pytest.raises(trust.Untrusted, match="resolves outside"):
        trust.confined(folder, "model.skops")


def test_check_mlmodel_accepts_what_the_project_logs():
    conf = trust.check_mlmodel(mlmodel(skops_trusted_types=["numpy.dtype"]), "run abc")
    assert conf["pickled_model"] == "model.skops"


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle", "joblib"])
def test_check_mlmodel_refuses_every_format_but_skops(fmt):
    with pytest.raises(trust.Untrusted, match=rf"^registry version 7: .*'{fmt}', not skops"):
        trust.check_mlmodel(mlmodel(serialization_format=fmt), "registry version 7")


def test_check_mlmodel_reads_a_missing_format_as_pickle_as_mlflow_does():
    model = mlmodel()
    del model["flavors"]["sklearn"]["serialization_format"]
    with pytest.raises(trust.Untrusted, match="'pickle', not skops"):
        trust.check_mlmodel(model, "registry version 7")


@pytest.mark.parametrize("dangerous", ["builtins.eval", "posix.system", "builtins.exec"])
def test_check_mlmodel_refuses_trusted_types_outside_the_codes_list(dangerous):
    listed = ["numpy.dtype", dangerous]
    with pytest.raises(trust.Untrusted, match=rf"trusts 1 type\(s\) outside .* '{dangerous}'"):
        trust.check_mlmodel(mlmodel(skops_trusted_types=listed), "registry version 2")


@pytest.mark.parametrize(
    "flavors",
    [
        {},
        {"python_function": {"loader_module": "mlflow.sklearn"}},
        {
            "sklearn": {"serialization_format": "skops"},
            "python_function": {"loader_module": "mlflow.pyfunc.model"},
        },
        {"sklearn": {"serialization_format": "skops"}, "onnx": {"onnx_model": "model.onnx"}},
    ],
)
def test_check_mlmodel_refuses_flavors_it_does_not_load(flavors):
    with pytest.raises(trust.Untrusted):
        trust.check_mlmodel({"flavors": flavors}, "run abc")


def test_a_refusal_is_one_line_and_escapes_control_characters():
    hostile = "pickle\n\x1b[31mOK"
    with pytest.raises(trust.Untrusted) as caught:
        trust.check_mlmodel(mlmodel(serialization_format=hostile), "registry version 1")
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


class Marker:
    """A pickle payload: unpickling it writes a file, as an attacker's would run a command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def test_load_skops_refuses_a_pickle_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(trust.Untrusted, match="not a loadable skops file"):
        trust.load_skops(pickle.dumps(Marker(marker)))
    assert not marker.exists()


def test_load_skops_trusts_the_codes_types_only():
    tree = DecisionTreeClassifier(max_depth=2).fit([[0.0], [1.0], [2.0]], [0, 1, 1])
    loaded = trust.load_skops(skops.io.dumps(tree))
    assert loaded.predict([[2.0]]).tolist() == [1]
    assert trust.load_skops(skops.io.dumps(LogisticRegression())).C == 1.0


def test_load_skops_refuses_a_type_the_code_does_not_trust():
    data = skops.io.dumps({"f": os.getcwd})  # a builtin function: not in TRUSTED_TYPES
    assert skops.io.get_untrusted_types(data=data)  # skops itself calls it untrusted
    with pytest.raises(trust.Untrusted, match="outside the project's trusted list"):
        trust.load_skops(data)


def test_private_copy_is_a_fresh_owner_only_folder_removed_after(tmp_path):
    with trust.private_copy(b"\x7fELF library", "model.so") as path:
        folder = os.path.dirname(path)
        with open(path, "rb") as handle:
            assert handle.read() == b"\x7fELF library"
        assert os.stat(folder).st_mode & 0o777 == 0o700  # no other user can enter, let alone swap it
        assert os.stat(path).st_mode & 0o222 == 0  # and the copy itself is not writable
        assert os.stat(folder).st_uid == os.getuid()
    assert not os.path.exists(folder)


def test_private_copy_gives_a_new_folder_each_time():
    with trust.private_copy(b"a", "model.so") as first, trust.private_copy(b"b", "model.so") as second:
        assert os.path.dirname(first) != os.path.dirname(second)
        for path, data in ((first, b"a"), (second, b"b")):
            with open(path, "rb") as handle:
                assert handle.read() == data
