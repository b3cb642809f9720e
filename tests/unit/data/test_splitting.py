"""pipelines/split.py: seeded, stratified train/holdout splits."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.data.splitting import can_stratify, features_and_target, split_frame


@pytest.fixture
def frame() -> pd.DataFrame:
    # 30 % "yes", in blocks, so an unstratified split would rarely keep the share exactly.
    labels = ["yes"] * 60 + ["no"] * 140
    return pd.DataFrame({"row": range(200), "x": [i % 7 for i in range(200)], "y": labels})


def split(frame: pd.DataFrame, seed: int = 42, task: str = "classification", size: float = 0.2):
    return split_frame(frame, target="y", task=task, holdout_size=size, seed=seed)


def test_same_seed_same_split(frame: pd.DataFrame) -> None:
    train_a, holdout_a = split(frame)
    train_b, holdout_b = split(frame.copy())
    pd.testing.assert_frame_equal(train_a, train_b)
    pd.testing.assert_frame_equal(holdout_a, holdout_b)


def test_other_seed_other_split(frame: pd.DataFrame) -> None:
    _, holdout_a = split(frame, seed=1)
    _, holdout_b = split(frame, seed=2)
    assert set(holdout_a["row"]) != set(holdout_b["row"])


def test_split_is_a_partition_with_the_requested_size(frame: pd.DataFrame) -> None:
    train, holdout = split(frame, size=0.25)
    assert len(holdout) == 50 and len(train) == 150
    assert set(train["row"]).isdisjoint(holdout["row"])
    assert set(train["row"]) | set(holdout["row"]) == set(frame["row"])
    assert list(train.index) == list(range(150))  # fresh index, written as-is to Parquet


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_classification_keeps_the_class_balance(frame: pd.DataFrame, seed: int) -> None:
    train, holdout = split(frame, seed=seed)
    assert (holdout["y"] == "yes").sum() == 12  # exactly 30 % of 40
    assert (train["y"] == "yes").sum() == 48


def test_rare_class_falls_back_to_a_plain_split(frame: pd.DataFrame) -> None:
    frame.loc[0, "y"] = "maybe"  # one row: stratification is impossible
    assert not can_stratify(frame["y"])
    train, holdout = split(frame)
    assert len(train) + len(holdout) == 200


def test_regression_is_not_stratified_but_still_seeded(frame: pd.DataFrame) -> None:
    frame["y"] = frame["x"] * 1.5
    a = split(frame, task="regression")
    b = split(frame, task="regression")
    pd.testing.assert_frame_equal(a[1], b[1])


def test_features_and_target_drop_target_and_ignored(frame: pd.DataFrame) -> None:
    X, y = features_and_target(frame, "y", ["row"])
    assert list(X.columns) == ["x"]
    assert y.name == "y" and len(y) == 200
    assert "y" in frame.columns  # the input is left alone
