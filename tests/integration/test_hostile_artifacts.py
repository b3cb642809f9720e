"""Hostile artifacts in a real MLflow registry and a real BentoML store are refused, and run nothing.

Whoever can write the registry or the store plays the attacker here: a version whose MLmodel
declares pickle (with a payload that writes a marker file), one that trusts dangerous types, one
whose model path leaves its folder, and files changed after promotion or packaging. `make promote`
and `make package` run as a user runs them (`python -m pipelines …` in a subprocess) and must
fail with one line naming the version; `bundle.load` and a real `bentoml serve` must refuse.
One trained, promoted and packaged project serves the whole module.
"""

import contextlib
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from helpers.champion import default_store_env, free_port, new_project, package_project, train_candidate
from helpers.support import PROJECT as REPO

from pipelines.core import stores
from pipelines.release import promotion, registry
from pipelines.serving import bundle, trust

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


class Marker:
    """Unpickling this writes `path`: what an attacker's pickle would do with a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A project whose champion v1 is packaged; its candidate file then names a newer (worse)
    run, so that `make promote` re-scores the champion rather than keeping it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("hostile")
        params = new_project(root)
        train_candidate(params, hide=[])
        assert promotion.run_promotion(root, params)["promoted"]
        record = package_project(root, params, REPO)
        train_candidate(params, hide=["x1"])
        yield root, params, record


def client_of(params):
    import mlflow

    return mlflow.MlflowClient(stores.tracking_uri(Path(params["tracking"]["store"])))


def cli(root, *args):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=root,
        env=default_store_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_refused(done, command, *needles):
    """Exit 1 and exactly one line on stderr, `ERROR <command>: …`, saying each needle."""
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR {command}: "), done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextmanager
def hostile_champion(root, params, edit):
    """A new registry version made from v1's files changed by `edit(folder, mlmodel)`, pointed
    at by `champion` (as an attacker with registry write access would), and v1 restored after."""
    import mlflow

    client, name = client_of(params), params["promote"]["registered_model"]
    mlflow.set_tracking_uri(client.tracking_uri)
    work = Path(root) / f"hostile-{time.monotonic_ns()}"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(work)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    edit(local, mlmodel)
    (local / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        mlflow.log_artifacts(str(local), "model")
    # The attacker can write tags too: the version carries the digest of the file it points to.
    target = local / mlmodel["flavors"]["sklearn"]["pickled_model"]
    tags = {"model.sha256": hashlib.sha256(target.read_bytes()).hexdigest()} if target.is_file() else {}
    version = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name, tags=tags).version)
    client.set_registered_model_alias(name, registry.CHAMPION, version)
    try:
        yield version
    finally:
        client.set_registered_model_alias(name, registry.CHAMPION, "1")


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_a_pickled_champion_is_refused_and_runs_nothing(shop, fmt):
    root, params, _ = shop
    marker = root / f"marker-{fmt}"

    def edit(folder, mlmodel):
        (folder / "model.pkl").write_bytes(pickle.dumps(Marker(marker)))
        mlmodel["flavors"]["sklearn"].update(serialization_format=fmt, pickled_model="model.pkl")
        mlmodel["flavors"]["python_function"]["model_path"] = "model.pkl"

    with hostile_champion(root, params, edit) as version:
        what = f"registry version {version} of 'test-model'"
        assert_refused(cli(root, "promote"), "promote", what, f"'{fmt}', not skops")
        assert_refused(cli(root, "package"), "package", what)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(Marker(marker))) is None and marker.exists()  # the payload is live


def test_a_version_that_trusts_dangerous_types_is_refused(shop):
    root, params, _ = shop

    def edit(folder, mlmodel):
        mlmodel["flavors"]["sklearn"]["skops_trusted_types"] += ["builtins.eval", "posix.system"]

    with hostile_champion(root, params, edit) as version:
        line = assert_refused(cli(root, "package"), "package", f"registry version {version}")
        assert "outside the project's list" in line and "builtins.eval" in line
        assert_refused(
            cli(root, "promote"), "promote", f"registry version {version}", "outside the project's list"
        )


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_model_path_out_of_the_download_is_refused(shop, where):
    root, params, _ = shop
    # A real skops file outside the download: without confinement, it would load.
    outside = root / "outside.skops"

    def edit(folder, mlmodel):
        shutil.copy(folder / "model.skops", outside)
        path = str(outside) if where == "absolute" else "../../../../../../../../" + str(outside).lstrip("/")
        mlmodel["flavors"]["sklearn"]["pickled_model"] = path

    with hostile_champion(root, params, edit) as version:
        reason = "is absolute" if where == "absolute" else "leaves its folder"
        assert_refused(cli(root, "package"), "package", f"registry version {version}", reason)


def test_a_registry_file_changed_after_promotion_is_refused_by_package(shop):
    import skops.io
    from sklearn.dummy import DummyClassifier

    root, params, _ = shop
    client, name = client_of(params), params["promote"]["registered_model"]
    source = client.get_model_version(name, "1").source  # models:/m-<id>, the logged model
    stored = Path(
        client.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://")
    )
    original = (stored / "model.skops").read_bytes()
    forged = DummyClassifier(strategy="constant", constant="yes").fit([[0]], ["yes"])
    # A different serving spec (one limit), so that package downloads again rather than reuse.
    changed = yaml.safe_load((root / "params.yaml").read_text())
    changed["serving"]["limits"]["max_records"] += 1
    before = (root / "params.yaml").read_text()
    try:
        (stored / "model.skops").write_bytes(skops.io.dumps(forged))  # a loadable, trusted-typed model
        (root / "params.yaml").write_text(yaml.safe_dump(changed))
        assert_refused(
            cli(root, "package"),
            "package",
            "registry version 1 of 'test-model'",
            "does not match its recorded SHA-256",
        )
    finally:
        (stored / "model.skops").write_bytes(original)
        (root / "params.yaml").write_text(before)


def packaged_dir(record):
    return Path(record["bentoml_home"]) / "models" / Path(*record["model"].split(":"))


def copy_of(record, tmp_path):
    """The packaged model's folder (files and model.yaml), copied: tampered without harm."""
    target = tmp_path / bundle.MODEL_NAME / record["model"].split(":")[1]
    shutil.copytree(packaged_dir(record), target)
    return target


def test_the_packaged_model_loads_and_records_every_digest(shop, tmp_path):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    meta = json.loads((folder / bundle.META_FILE).read_text())
    for name in (bundle.MODEL_FILE, bundle.COMPILED_FILE):
        assert meta["digests"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert "trusted_types" not in meta  # the code's list rules, never a copy in the bundle
    assert bundle.load(folder).runtime == "onnx"


@pytest.mark.parametrize("name", [bundle.MODEL_FILE, bundle.COMPILED_FILE])
def test_a_tampered_file_in_the_store_is_refused_by_bundle_load(shop, tmp_path, name):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    with open(folder / name, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(trust.Untrusted, match=f"{name} does not match its recorded SHA-256"):
        bundle.load(folder)


def test_a_tampered_file_and_meta_are_refused_by_the_label(shop, tmp_path):
    """Two edits (the graph and meta.json's digest of it) still fail: meta.json's own digest is a label."""
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    forged = (folder / bundle.COMPILED_FILE).read_bytes() + b"\0"
    (folder / bundle.COMPILED_FILE).write_bytes(forged)
    meta = json.loads((folder / bundle.META_FILE).read_text())
    meta["digests"][bundle.COMPILED_FILE] = meta["compiled"]["sha256"] = hashlib.sha256(forged).hexdigest()
    (folder / bundle.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(trust.Untrusted, match=r"meta\.json does not match its recorded SHA-256"):
        bundle.load(folder)


def test_a_model_packaged_before_digests_is_refused_with_the_fix(shop, tmp_path):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    model_yaml = yaml.safe_load((folder / bundle.MODEL_YAML).read_text())
    for label in (bundle.META_LABEL, bundle.SKOPS_LABEL):
        del model_yaml["labels"][label]
    (folder / bundle.MODEL_YAML).write_text(yaml.safe_dump(model_yaml))
    with pytest.raises(trust.Untrusted, match=r"packaged without file digests: run `make package` again"):
        bundle.load(folder)


def test_a_tampered_store_stops_package_and_bentoml_serve(shop):
    """The graph in the real store changed: `make package` refuses to build on it, and `bentoml
    serve` exits instead of serving (refusing to start, not falling back to another runtime)."""
    root, _, record = shop
    graph = packaged_dir(record) / bundle.COMPILED_FILE
    original = graph.read_bytes()
    graph.write_bytes(original + b"\0")
    try:
        assert_refused(
            cli(root, "package"), "package", "does not match its recorded SHA-256", "bentoml models delete"
        )
        port = free_port()
        env = {**default_store_env(root), "API_KEY": "k" * 32}
        log = root / "serve-tampered.log"
        bentoml = str(Path(sys.executable).parent / "bentoml")
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [bentoml, "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        served = False
        try:
            # Until it exits, or its workers have refused twice (they are respawned and refuse
            # again, never serving): no need to watch the loop for the whole deadline.
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                refusals = log.read_text().count("does not match its recorded SHA-256")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                        served = served or answer.status == 200
                except OSError:
                    pass
                if refusals >= 2:  # probed once more after the second refusal
                    break
                time.sleep(0.5)
        finally:
            exited = proc.poll()  # None: still up (its workers refusing in a loop) when time ran out
            if exited is None:
                # BentoML's workers run in sessions of their own: a SIGKILL of the arbiter alone
                # would leave them serving as orphans. SIGTERM lets it stop them; stragglers go after.
                workers = psutil.Process(proc.pid).children(recursive=True)
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                for worker in workers:
                    with contextlib.suppress(psutil.Error):
                        worker.kill()
        text = log.read_text()
        assert not served, text[-3000:]
        assert exited != 0, "bentoml serve exited 0 on a tampered store"
        assert "does not match its recorded SHA-256" in text, text[-3000:]
    finally:
        graph.write_bytes(original)
