"""`make batch-predict`: a packaged champion scores a file, refusing exactly what the service refuses.

One champion is trained and packaged per module, on data with an integer field (`count`) and a
free-text field (`note`) beside the usual numbers and category, so every kind of record rule is
in its contract.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers.champion import (
    default_store_env,
    free_port,
    make_frame,
    new_project,
    package_project,
    serve,
    stop,
    train_candidate,
)
from helpers.support import PROJECT as REPO

from pipelines.batch import scoring
from pipelines.core import files
from pipelines.release import promotion
from pipelines.serving import answers, bundle

pytestmark = pytest.mark.integration

MAX_STRING = 16
NOTES = [f"{'w' * (MAX_STRING - 2)}{i:02d}" for i in range(60)]
KEY = "batch-test-key-0123456789"
BENTOML = str(Path(sys.executable).parent / "bentoml")


def frame_with_every_kind(n, seed):
    """make_frame plus an integer 0..20 and a free-text field: 60 values (over the category cap),
    each exactly MAX_STRING long, so a record at the length limit holds a value the model knows."""
    rng = np.random.default_rng(seed + 100)
    frame = make_frame(n, seed)
    return frame.assign(count=rng.integers(0, 21, size=n), note=rng.choice(NOTES, size=n))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    files.write_parquet(frame_with_every_kind(1500, 1), params["paths"]["train"])
    files.write_parquet(frame_with_every_kind(1000, 2), params["paths"]["holdout"])
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO, limits={"max_string_length": MAX_STRING})
    model_dir = Path(record["bentoml_home"]) / "models" / bundle.MODEL_NAME / record["model"].split(":")[1]
    meta = bundle.read_meta(model_dir)
    assert meta["fields"]["count"]["type"] == "integer" and "allowed" not in meta["fields"]["note"]
    assert not meta["fields"]["x1"]["nullable"] and not meta["fields"]["count"]["nullable"]
    return root, record, model_dir


def cli(root, *args):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=default_store_env(root),  # the user whose BentoML store `package_project` filled
    )


def test_batch_predict_scores_good_rows_and_rejects_bad_ones(packaged, tmp_path):
    root, _, model_dir = packaged
    frame = frame_with_every_kind(300, 7)
    frame.loc[[5, 17], "x1"] = np.nan  # x1 is not nullable in the inferred contract
    frame.loc[40, "color"] = "purple"
    frame["count"] = frame["count"].astype(object)
    frame.loc[60, "count"] = 5.0  # written "5.0": a float, which the service refuses for an integer
    source, target = tmp_path / "in.tsv", tmp_path / "out.csv.gz"
    frame.to_csv(source, sep="\t", index=False)
    done = cli(root, source, target, "--chunk-rows", "64")
    assert done.returncode == 0, done.stderr[-2000:]
    rejects_file = tmp_path / "out.rejects.csv.gz"
    assert done.stdout == f"SCORED 296 rows -> {target}; 4 refused -> {rejects_file}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv", "out.csv.gz", "out.rejects.csv.gz"]
    rejects = pd.read_csv(rejects_file)
    assert rejects.set_index("id")["reason"].to_dict() == {
        5: "x1: missing, and the contract says not nullable",
        17: "x1: missing, and the contract says not nullable",
        40: "color: not an allowed value",
        60: "count: not an integer",
    }
    scored = pd.read_csv(target)
    good = frame.drop(index=[5, 17, 40, 60]).astype({"count": "int64"})
    assert scored["id"].tolist() == good["id"].tolist()
    expected, probabilities = answers.answer_frame(bundle.load(model_dir), good.drop(columns=["id"]))
    assert scored["prediction"].tolist() == expected
    np.testing.assert_allclose(scored["probability_yes"], probabilities["probability_yes"], atol=1e-6)


def test_batch_predict_refuses_in_one_line_and_keeps_what_is_stored(packaged, tmp_path):
    root = packaged[0]
    source = tmp_path / "in.csv"
    frame_with_every_kind(20, 3).to_csv(source, index=False)
    original = source.read_bytes()
    (tmp_path / "alias.csv").symlink_to(source)
    done = cli(root, source, tmp_path / "alias.csv")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"ERROR batch: OUT '{tmp_path / 'alias.csv'}' is the input file; write the results elsewhere"
    ]
    assert source.read_bytes() == original
    broken, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    out.write_bytes(b"yesterday's results")
    done = cli(root, broken, out)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"ERROR batch: '{broken}' is not a valid Parquet file (damaged, cut short, or another format)"
    ]
    assert out.read_bytes() == b"yesterday's results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.csv", "in.csv", "in.parquet", "out.parquet"]


def test_batch_predict_bad_input_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", str(tmp_path / "nope.csv"), str(tmp_path / "o.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"ERROR batch: '{tmp_path / 'nope.csv'}' does not exist"]


# --- batch and the served bento against one hand-written oracle ---

BASE = {"id": 1, "x1": 0.5, "x2": -0.5, "color": "red", "count": 5, "note": NOTES[1]}
# (name, field, the value as a JSON literal, accepted?). None as the literal: the field is absent.
# The verdicts are the record rules as documented (docs/serving.md), written out by hand.
CASES = [
    ("base record", "count", "5", True),
    ("integer as float", "count", "5.0", False),
    ("integer as string", "count", '"5"', False),
    ("integer as boolean", "count", "true", False),
    ("integer below minimum", "count", "-1", False),
    ("integer missing", "count", None, False),
    ("number as integer", "x1", "2", True),
    ("number as string", "x1", '"1.5"', False),
    ("number as boolean", "x1", "true", False),
    ("number overflowing to inf", "x1", "1e400", False),
    ("number missing", "x1", None, False),
    ("category not allowed", "color", '"purple"', False),
    ("string at the length limit", "note", json.dumps(NOTES[2]), True),
    ("string over the length limit", "note", json.dumps(NOTES[2] + "w"), False),
    ("id as float", "id", "5.0", False),
]


def request_body(field, literal):
    """The JSON body with the case's literal written in as text (so 1e400 and 5.0 stay as typed)."""
    fields = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in BASE.items() if k != field]
    if literal is not None:
        fields.append(f"{json.dumps(field)}: {literal}")
    return '{"records": [{' + ", ".join(fields) + "}]}"


def as_file_row(field, literal):
    """The case as one record of Python values, typed as json.loads types them."""
    return {**BASE, field: None if literal is None else json.loads(literal)}


def csv_row(field, literal):
    """The case as CSV cells: each literal as written, a string without its quotes, absent as empty."""
    cells = {k: v if isinstance(v, str) else json.dumps(v) for k, v in BASE.items()}
    quoted = literal is not None and literal.startswith('"')
    return {**cells, field: "" if literal is None else json.loads(literal) if quoted else literal}


def batch_verdicts(model_dir, folder, name, frame, suffix):
    """Per row of `frame`, whether batch scoring accepted it, and the refused rows' reasons.

    Rows are told apart by the target column (`label`), which batch passes through untouched."""
    source, target = folder / f"{name}.in{suffix}", folder / f"{name}.out{suffix}"
    if suffix == ".csv":
        frame.to_csv(source, index=False)
    else:
        frame.to_parquet(source, index=False)
    rejects = scoring.rejects_path(str(source), str(target))
    scoring.run(str(source), str(target), rejects, 1000, model_dir)

    def read(path):
        return pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)

    accepted = set(read(target)["label"])
    reasons = read(rejects).set_index("label")["reason"].to_dict()
    return [label in accepted for label in frame["label"]], reasons


@pytest.fixture(scope="module")
def served(packaged, tmp_path_factory):
    root, record, _ = packaged
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEY_FILE")}
    env.update(
        BENTOML_HOME=record["bentoml_home"],
        BENTOML_DO_NOT_TRACK="true",
        PREDICTION_LOG_DIR=str(tmp_path_factory.mktemp("predlog")),
        API_KEY=KEY,
    )
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, root, env, port)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as client:
        yield client
    stop(proc)


def post_text(client, body):
    """The service's answer to one body, or the transport error that took its place."""
    try:
        return client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"


def differences(verdicts, expected):
    return [case[0] for case, got, want in zip(CASES, verdicts, expected, strict=True) if got != want]


def test_batch_and_the_service_refuse_exactly_the_hand_written_cases(packaged, served, tmp_path):
    _, _, model_dir = packaged
    expected = [accepted for *_, accepted in CASES]

    # The served bento: one request per case, the body written as text.
    responses = [post_text(served, request_body(field, literal)) for _, field, literal, _ in CASES]
    for (name, *_), response in zip(CASES, responses, strict=True):
        assert isinstance(response, httpx.Response), (name, response)
        assert response.status_code in (200, 400, 422), (name, response.status_code, response.text)
    service = [r.status_code == 200 for r in responses]
    assert service == expected, differences(service, expected)

    # Batch from Parquet: one file per case, each column in the type its value has.
    parquet = []
    for i, (name, field, literal, _) in enumerate(CASES):
        frame = pd.DataFrame([{**as_file_row(field, literal), "label": f"case{i}"}])
        if literal is None:  # a null cell in a column of the field's own type
            frame[field] = pd.Series([None], dtype="float64" if field == "x1" else "Int64")
        (accepted,), reasons = batch_verdicts(model_dir, tmp_path, f"case{i}", frame, ".parquet")
        parquet.append(accepted)
        if not accepted:  # refused for the field the service names
            assert reasons[f"case{i}"].startswith(f"{field}:"), (name, reasons)
            assert responses[i].json().get("field") in (None, f"records.0.{field}"), (name, responses[i].text)
    assert parquet == expected, differences(parquet, expected)

    # Batch from one CSV file holding every case a CSV cell can spell. A cell has no string type:
    # a quoted number ("5") is the number 5 there, so those two cases are the Parquet files' alone.
    spellable = [
        i
        for i, (_, field, literal, _) in enumerate(CASES)
        if not (literal or "").startswith('"') or field in ("color", "note")
    ]
    assert len(spellable) == len(CASES) - 2
    frame = pd.DataFrame([{**csv_row(*CASES[i][1:3]), "label": f"case{i}"} for i in spellable])
    csv, _ = batch_verdicts(model_dir, tmp_path, "cases", frame, ".csv")
    assert csv == [expected[i] for i in spellable], [
        CASES[i][0] for i, got in zip(spellable, csv, strict=True) if got != expected[i]
    ]


def test_an_unseen_free_text_value_is_scored(packaged, tmp_path):
    _, _, model_dir = packaged
    frame = pd.DataFrame([{**BASE, "note": "never seen"}])
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    assert scoring.run(str(source), str(tmp_path / "o.csv"), str(tmp_path / "r.csv"), 10, model_dir) == (1, 0)
