"""pipelines/monitoring/labels.py: labels joined to a log the real writer made, exactly once, with
hand-counted conflicts and unknowns; live metrics against sklearn.metrics called directly."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn import metrics as skm

from pipelines.monitoring import labels, logs
from pipelines.monitoring.errors import MonitorError
from pipelines.serving import log_lines
from pipelines.serving.prediction_log import PredictionLog

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
EXAMPLES = 5  # example keys per problem (monitor.examples)


def fixed_clock(monkeypatch):
    now = {"t": T0}

    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return now["t"]

    monkeypatch.setattr(log_lines, "datetime", Fixed)
    return now


@pytest.fixture
def classified(tmp_path, monkeypatch):
    """40 requests of 5 records, seeded probabilities; requests 0-19 in hour 12, 20-39 in hour 13.
    Returns the root and {(request_id, record): (p_yes, prediction)}."""
    now = fixed_clock(monkeypatch)
    rng = np.random.default_rng(7)
    log = PredictionLog(tmp_path, 0, {"fsync": "none"})
    truth = {}
    for i in range(40):
        now["t"] = T0 + timedelta(minutes=3 * i)
        p_yes = rng.uniform(0, 1, 5).round(4)
        predictions = ["yes" if p >= 0.5 else "no" for p in p_yes]
        probabilities = [{"no": float(1 - p), "yes": float(p)} for p in p_yes]
        log(f"r{i}", "3", [{"x": float(k)} for k in range(5)], predictions, probabilities, 1.0)
        truth.update({(f"r{i}", k): (float(p_yes[k]), predictions[k]) for k in range(5)})
    log.close()
    return tmp_path, truth


def write_labels(root, writer, entries):
    folder = root / "feedback"
    folder.mkdir(exist_ok=True)
    with open(folder / f"labels.{writer}.jsonl", "a") as out:
        for n, (request_id, record, label) in enumerate(entries):
            received = (T0 + timedelta(days=1, seconds=n)).isoformat()
            line = {
                "request_id": request_id,
                "record": record,
                "label": label,
                "received_at": received,
                "source": "api",
            }
            out.write(json.dumps(line) + "\n")


def run(root, positive="yes", min_labels=1):
    joined = labels.join(
        logs.iter_frames(root, only=labels.LOG_FIELDS), labels.read_labels(root), WINDOW, examples=EXAMPLES
    )
    return labels.live_performance(joined, positive, min_labels)


def test_join_is_exactly_once_with_conflicts_and_unknowns_counted(classified):
    root, _ = classified
    write_labels(root, "a", [("r0", 0, "yes"), ("r0", 1, "no"), ("r1", 0, "no"), ("nope", 0, "yes")])
    # writer b: r0#0 again, identical (resubmitted); r0#1 with another label (a conflict: the first,
    # "no", wins); r1#0 identical twice; r2#9 is no record of r2; r3#0 is not a class.
    write_labels(
        root,
        "b",
        [
            ("r0", 0, "yes"),
            ("r0", 1, "yes"),
            ("r1", 0, "no"),
            ("r1", 0, "no"),
            ("r2", 9, "no"),
            ("r3", 0, "maybe"),
        ],
    )
    result = run(root)
    report = result["labels"]
    assert report["lines"] == 10
    assert report["keys"] == 6  # r0#0 r0#1 r1#0 nope#0 r2#9 r3#0
    assert report["resubmitted"] == 3
    assert (report["conflicting"], report["conflict_examples"]) == (1, ["r0#1"])
    assert report["unknown"] == 2 and sorted(report["unknown_examples"]) == ["nope#0", "r2#9"]
    assert (report["invalid"], report["invalid_examples"]) == (1, ["r3#0"])
    assert report["joined"] == 3
    first = result["windows"][0]
    assert (first["predictions"], first["labeled"]) == (100, 3)
    assert first["label_coverage"] == 3 / 100
    assert result["windows"][1]["labeled"] == 0 and result["windows"][1]["status"] == "insufficient_labels"


def test_resubmitting_every_label_changes_nothing(classified):
    root, truth = classified
    rng = np.random.default_rng(1)
    keys = sorted(truth)[::3]
    entries = [(rid, rec, str(rng.choice(["yes", "no"]))) for rid, rec in keys]
    write_labels(root, "a", entries)
    before = run(root)
    write_labels(root, "b", entries)
    after = run(root)
    assert after["windows"] == before["windows"]
    assert after["labels"]["resubmitted"] == len(entries) and after["labels"]["conflicting"] == 0


def test_live_metrics_equal_sklearn_on_the_joined_rows(classified):
    root, truth = classified
    rng = np.random.default_rng(2)
    keys = [key for key in sorted(truth) if rng.uniform() < 0.6]
    chosen = {key: ("yes" if rng.uniform() < truth[key][0] else "no") for key in keys}
    write_labels(root, "a", [(rid, rec, label) for (rid, rec), label in chosen.items()])
    result = run(root, min_labels=10)
    assert [w["window_start"] for w in result["windows"]] == [
        "2026-01-01T12:00:00+00:00",
        "2026-01-01T13:00:00+00:00",
    ]
    for hour, window in zip((0, 1), result["windows"], strict=True):
        in_window = [k for k in keys if (int(k[0][1:]) >= 20) == bool(hour)]
        y = np.array([chosen[k] == "yes" for k in in_window])
        p = np.array([truth[k][0] for k in in_window])
        predicted = np.array([truth[k][1] == "yes" for k in in_window])
        expected = {
            "accuracy": skm.accuracy_score(y, predicted),
            "roc_auc": skm.roc_auc_score(y, p),
            "f1": skm.f1_score(y, predicted),
            "log_loss": skm.log_loss(y, p),
        }
        assert window["metrics"] == pytest.approx(expected, rel=1e-9)
        assert window["labeled"] == len(in_window) and window["predictions"] == 100
        # The label-free estimate: mean of the highest class probability over every prediction.
        everything = [truth[(f"r{i}", k)][0] for i in range(20 * hour, 20 * hour + 20) for k in range(5)]
        assert window["estimated_accuracy"] == pytest.approx(
            np.mean(np.maximum(everything, 1 - np.array(everything)))
        )
    assert "blind" in result["estimate_caveat"]


def test_a_window_with_one_class_gives_no_roc_auc(classified):
    root, _ = classified
    write_labels(root, "a", [("r0", k, "yes") for k in range(5)])
    metrics = run(root)["windows"][0]["metrics"]
    assert metrics["roc_auc"] is None and metrics["accuracy"] is not None


def test_regression_labels_give_the_regression_metrics(tmp_path, monkeypatch):
    fixed_clock(monkeypatch)
    log = PredictionLog(tmp_path, 0, {"fsync": "none"})
    log("q", "1", [{"x": float(k)} for k in range(4)], [1.0, 2.0, 3.0, 5.0], None, 1.0)
    log.close()
    write_labels(tmp_path, "a", [("q", 0, 1.5), ("q", 1, 2), ("q", 2, 2.5), ("q", 3, 4.0)])
    result = run(tmp_path, positive=None)
    y, p = [1.5, 2.0, 2.5, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert result["windows"][0]["metrics"] == pytest.approx(
        {
            "r2": skm.r2_score(y, p),
            "rmse": skm.root_mean_squared_error(y, p),
            "mae": skm.mean_absolute_error(y, p),
        }
    )
    assert "estimate_caveat" not in result and "estimated_accuracy" not in result["windows"][0]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 2 is not a JSON object"),
        (
            '{"request_id": "", "record": 0, "label": 1, "received_at": "2026-01-01T00:00:00+00:00", "source": "api"}',
            "line 2 has no request_id",
        ),
        (
            '{"request_id": "a", "record": true, "label": 1, "received_at": "2026-01-01T00:00:00+00:00", "source": "api"}',
            "line 2 has no record index",
        ),
        (
            '{"request_id": "a", "record": 0, "label": null, "received_at": "2026-01-01T00:00:00+00:00", "source": "api"}',
            "line 2 has no label",
        ),
        (
            '{"request_id": "a", "record": 0, "label": 1, "received_at": "2026-01-01T00:00:00", "source": "api"}',
            "line 2 has a received_at time without a time zone",
        ),
        (
            '{"request_id": "a", "record": 0, "label": 1, "received_at": "2026-01-01T00:00:00+00:00", "source": "mail"}',
            "line 2 has no source",
        ),
    ],
)
def test_a_bad_label_line_names_file_and_line(tmp_path, line, problem):
    write_labels(tmp_path, "a", [("a", 0, 1)])
    with open(tmp_path / "feedback" / "labels.a.jsonl", "a") as out:
        out.write(line + "\n")
    with pytest.raises(MonitorError) as caught:
        labels.read_labels(tmp_path)
    assert str(caught.value).startswith(f"feedback/labels.a.jsonl: {problem}")


def test_no_feedback_folder_is_no_labels(classified):
    root, _ = classified
    assert labels.read_labels(root).empty
    result = run(root)
    assert [w["labeled"] for w in result["windows"]] == [0, 0]
    assert result["labels"]["keys"] == 0


def test_a_boolean_label_names_its_class_as_the_log_does():
    assert labels.class_key(True) == "true" and labels.class_key(False) == "false"
    assert labels.class_key(1) == "1" and labels.class_key("Yes") == "Yes"
    entry = {
        "request_id": "r1",
        "record": 0,
        "label": True,
        "source": "api",
        "received_at": "2026-11-28T00:00:00+00:00",
    }
    assert labels.label_problem(entry) is None


GOOD = '"received_at": "2026-01-01T00:00:00+00:00", "source": "api"'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # Lines pyarrow would parse (or parse differently) but json.loads per line refuses.
        (
            '{"request_id": "a", "record": 0, "label": 1, ' + GOOD + '}{"request_id": "b"}',
            "is not a JSON object",
        ),
        ('{"request_id": "a", "record": 0, "label": 1, ' + GOOD + "}\r{}", "is not a JSON object"),
        ('{"request_id": "a", "record": 1.0, "label": 1, ' + GOOD + "}", "has no record index"),
        ('{"request_id": "a", "record": -1, "label": 1, ' + GOOD + "}", "has no record index"),
        ('{"request_id": 7, "record": 0, "label": 1, ' + GOOD + "}", "has no request_id"),
        (
            '{"request_id": "a", "record": 0, "label": NaN, ' + GOOD + "}",
            "has a label that is not a finite number",
        ),
        ('{"request_id": "a", "record": 0, "label": [1], ' + GOOD + "}", "has no label"),
        ('{"request_id": "a", "record": 0, ' + GOOD + "}", "has no label"),
        (
            '{"request_id": "a", "record": 0, "label": 1, "received_at": "soon", "source": "api"}',
            "has no received_at",
        ),
        (
            '{"request_id": "a", "record": 0, "label": 1, "received_at": 5, "source": "api"}',
            "has no received_at",
        ),
    ],
)
def test_the_whole_file_reader_refuses_what_the_line_reader_refuses(tmp_path, line, problem):
    """read_labels parses a file whole with pyarrow when it can; each of these lines must still be
    refused, by number, exactly as label_problem refuses it (the first line is valid)."""
    write_labels(tmp_path, "a", [("a", 0, 1)])
    with open(tmp_path / "feedback" / "labels.a.jsonl", "a") as out:
        out.write(line + "\n")
    with pytest.raises(MonitorError) as caught:
        labels.read_labels(tmp_path)
    assert str(caught.value).startswith(f"feedback/labels.a.jsonl: line 2 {problem}")


@pytest.mark.parametrize(
    "values",
    [
        ["yes", "no", ""],
        [1, 0, 2],
        [True, False, True],
        pytest.param(
            [1, 1.0, 2.5],
            # Known, and older than the whole-file reader: pandas makes a column of ints and
            # floats all floats, so the label 1 becomes 1.0 (class "1.0", not "1").
            marks=pytest.mark.xfail(
                strict=True, reason="read_labels' frame casts mixed int/float labels to float"
            ),
        ),
        ["1", 1, True],
    ],
)
def test_labels_keep_their_json_type_whichever_reader_reads_them(tmp_path, values):
    """The frame equals json.loads per line (1 stays an int, 1.0 a float, true a bool), with blank
    lines skipped, whether pyarrow could read the file whole or not."""
    write_labels(tmp_path, "a", [(f"r{n}", n, value) for n, value in enumerate(values)])
    path = tmp_path / "feedback" / "labels.a.jsonl"
    path.write_text(path.read_text().replace("\n", "\n\n  \n", 1))
    expected = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame = labels.read_labels(tmp_path)
    assert frame["request_id"].tolist() == [e["request_id"] for e in expected]
    assert frame["record"].tolist() == [e["record"] for e in expected]
    assert [(type(v), v) for v in frame["label"]] == [(type(e["label"]), e["label"]) for e in expected]
    assert frame["source"].tolist() == ["api"] * len(values)
    assert [t.isoformat() for t in frame["received_at"]] == [e["received_at"] for e in expected]
    assert frame["record"].dtype == "int64" and frame["label"].dtype == object


def test_first_label_identity_follows_json_equality(tmp_path):
    """1, 1.0 and true are one label (a resubmission); 1 and "1" are two (a conflict)."""
    write_labels(tmp_path, "a", [("k", 0, 1), ("k", 0, 1.0), ("k", 0, True), ("j", 0, 1), ("j", 0, "1")])
    _, report = labels.first_labels(labels.read_labels(tmp_path), EXAMPLES)
    assert (report.keys, report.resubmitted, report.conflicting, report.conflict_examples) == (
        2,
        2,
        1,
        ["j#0"],
    )


def test_each_labelled_record_joins_once_over_many_frames_and_a_file_read_twice(classified):
    """Small blocks spread the log over many frames, and the frames come twice (a rotation racing
    the reader): every labelled record is joined once, with its own prediction and label."""
    root, truth = classified
    rng = np.random.default_rng(3)
    keys = [key for key in sorted(truth) if rng.uniform() < 0.3]
    chosen = {key: str(rng.choice(["yes", "no"])) for key in keys}
    write_labels(root, "a", [(rid, rec, label) for (rid, rec), label in chosen.items()] + [("r5", 99, "no")])
    frames = list(logs.iter_frames(root, block_bytes=1024, only=labels.LOG_FIELDS))
    assert len(frames) > 10
    joined = labels.join(frames + frames, labels.read_labels(root), WINDOW, examples=EXAMPLES)
    got = {
        (rid, rec): (label, prediction)
        for rid, rec, label, prediction in joined.rows[
            ["request_id", "record", "label", "prediction"]
        ].itertuples(index=False)
    }
    assert len(joined.rows) == len(keys)
    assert got == {key: (chosen[key], truth[key][1]) for key in keys}
    assert (joined.report.unknown, joined.report.unknown_examples) == (1, ["r5#99"])
    assert joined.windows["predictions"].sum() == 2 * len(truth)  # every frame's predictions counted
