"""CSV -> split, scaled arrays: the real Appliances file, UCI's two other schemas, categories, dates, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from eca_core.runner.config import from_dict
from eca_core.errors import InputError
from eca_tab.preprocess import PreprocessConfig, load_prepared, prepare
from tests.tab.conftest import APPLIANCES, ROOT

needs_appliances = pytest.mark.skipif(not APPLIANCES.is_file(), reason="../shared/data/uci not present")


def _cfg(**kw) -> PreprocessConfig:
    return from_dict(PreprocessConfig, kw, "test")


@needs_appliances
def test_appliances_random_split_as_distributed():
    p = prepare(_cfg(csv=str(APPLIANCES), dataset="appliances"))
    s = p.schema
    assert s["target"] == "Appliances" and len(s["numeric"]) == 27 and s["numeric"][0] == "lights"
    assert s["dates"] == {"columns": ["date"], "treatment": "drop"} and s["categorical"] == []
    assert s["sizes"] == {"train": 12630, "val": 3158, "test": 3947}  # 64 / 16 / 20 of 19,735 rows
    rows = np.concatenate([p.rows[k] for k in ("train", "val", "test")])
    assert np.array_equal(np.sort(rows), np.arange(19735))  # every row once
    raw = pd.read_csv(APPLIANCES)
    np.testing.assert_allclose(p.y["test"], raw["Appliances"].to_numpy(float)[p.rows["test"]])
    assert abs(float(np.median(p.x_num["train"][:, 1]))) < 0.05  # quantile -> normal, fitted on train
    assert p.x_num["train"].dtype == np.float32 and p.x_cat["train"].shape == (12630, 0)
    again = prepare(_cfg(csv=str(APPLIANCES), dataset="appliances"))
    assert np.array_equal(again.rows["test"], p.rows["test"])  # seeded
    other = prepare(_cfg(csv=str(APPLIANCES), dataset="appliances", split_seed=1))
    assert not np.array_equal(other.rows["test"], p.rows["test"])


@needs_appliances
def test_appliances_chronological_split_and_date_expansion():
    p = prepare(_cfg(csv=str(APPLIANCES), dataset="appliances", split="chronological", date="expand"))
    dates = pd.to_datetime(pd.read_csv(APPLIANCES, usecols=["date"])["date"]).to_numpy()
    assert dates[p.rows["train"]].max() < dates[p.rows["val"]].min()
    assert dates[p.rows["val"]].max() < dates[p.rows["test"]].min()  # no future row informs a past one
    assert p.schema["split"]["order"] == "by date" and p.schema["split"]["seed"] is None
    assert p.schema["numeric"][-3:] == ["date.hour", "date.dayofweek", "date.dayofyear"]


def _uci_like(path, columns: list[str], target: str, n: int = 60, text: str | None = None, leading_space: bool = False):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.uniform(1, 5, size=(n, len(columns))), columns=columns)
    frame[target] = rng.integers(1, 5000, n)
    if text:
        frame[text] = [f"http://mashable.com/2013/01/0{i % 9}/story-{i}/" for i in range(n)]
    sep = ", " if leading_space else ","
    lines = [sep.join(frame.columns)] + [sep.join(str(v) for v in row) for row in frame.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")
    return frame


def test_online_news_schema_as_uci_ships_it(tmp_path):
    """61 columns, a space after each comma, url text and timedelta dropped, log(shares): 58 features."""
    names = ["timedelta"] + [f"f{i}" for i in range(58)]
    frame = _uci_like(tmp_path / "OnlineNewsPopularity.csv", names, "shares", text="url", leading_space=True)
    frame = frame[["url"] + names + ["shares"]]
    lines = [", ".join(frame.columns)] + [", ".join(str(v) for v in r) for r in frame.itertuples(index=False)]
    (tmp_path / "OnlineNewsPopularity.csv").write_text("\n".join(lines) + "\n")
    assert len(frame.columns) == 61
    p = prepare(_cfg(csv=str(tmp_path / "OnlineNewsPopularity.csv"), dataset="online_news"))
    assert len(p.schema["numeric"]) == 58 and "timedelta" not in p.schema["numeric"] and p.schema["categorical"] == []
    np.testing.assert_allclose(p.y["train"], np.log(frame["shares"].to_numpy(float)[p.rows["train"]]))
    assert p.schema["target_transform"] == "log"


def test_superconductivity_schema(tmp_path):
    _uci_like(tmp_path / "train.csv", [f"f{i}" for i in range(81)], "critical_temp")
    p = prepare(_cfg(csv=str(tmp_path / "train.csv"), dataset="superconductivity", scaling="standard"))
    assert len(p.schema["numeric"]) == 81 and p.schema["target"] == "critical_temp"
    np.testing.assert_allclose(p.x_num["train"].mean(0), 0, atol=1e-5)


def test_categories_from_training_rows_and_unknown_index(small_csv):
    p = prepare(_cfg(csv=str(small_csv), target="y", split="chronological"))
    assert p.schema["numeric"] == ["a", "b", "c"] and p.schema["dates"]["columns"] == ["when"]
    (cat,) = p.schema["categorical"]
    assert cat["name"] == "city" and cat["categories"] == ["Lyon", "Oslo", "Quito"] and cat["cardinality"] == 4
    assert set(np.unique(p.x_cat["test"])) <= {0, 1, 2}
    frame = pd.read_csv(small_csv)
    frame.loc[frame.index[-5:], "city"] = "Nuuk"  # only in the newest (test) rows
    frame.to_csv(small_csv, index=False)
    q = prepare(_cfg(csv=str(small_csv), target="y", split="chronological"))
    assert (q.x_cat["test"][-5:, 0] == 3).all()  # the unknown index


def test_written_folder_round_trips(tmp_path, small_csv):
    out = tmp_path / "pre"
    r = subprocess.run([sys.executable, "-m", "eca_tab.cli", "preprocess", str(small_csv), "--target", "y", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "3 numeric + 1 categorical feature(s); date column(s) ['when']: drop; random split" in r.stdout
    p = load_prepared(out)
    assert p.x_num["train"].shape == (154, 3) and p.schema["sizes"] == {"train": 154, "val": 38, "test": 48}


@pytest.mark.parametrize("edit, args, message", [
    (None, ["--target", "price"], r"small.csv: no column\(s\) \['price'\] \(from target\)"),
    (None, ["--target", "city"], r"small.csv: target column 'city' is not numeric"),
    ("nan_feature", ["--target", "y"], r"small.csv: numeric column 'a' has 1 missing or non-finite value"),
    ("nan_target", ["--target", "y"], r"small.csv: target 'y' is missing or not finite in 1 row\(s\), first at data row 4"),
    (None, ["--target", "b", "--target-transform", "log"], r"small.csv: target_transform log needs b > 0"),
    (None, ["--target", "y", "--dataset", "appliance"], r"unknown data set 'appliance'"),
    ("garbage", ["--target", "y"], r"small.csv: .*(not a readable CSV|no column)"),
])
def test_bad_input_is_one_line(tmp_path, small_csv, edit, args, message, capsys):
    import re

    from eca_tab.cli import main

    if edit == "nan_feature":
        frame = pd.read_csv(small_csv)
        frame.loc[7, "a"] = np.nan
        frame.to_csv(small_csv, index=False)
    elif edit == "nan_target":
        frame = pd.read_csv(small_csv)
        frame.loc[3, "y"] = np.nan
        frame.to_csv(small_csv, index=False)
    elif edit == "garbage":
        small_csv.write_bytes(b"\x00\xff\xfe binary \x00" * 50)
    capsys.readouterr()
    code = main(["preprocess", str(small_csv), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("eca-tab preprocess: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "o" / "prepared.npz").exists()


def test_no_target_is_refused(small_csv):
    with pytest.raises(InputError, match="no target column given"):
        prepare(_cfg(csv=str(small_csv)))
    with pytest.raises(Exception, match="val_fraction \\+ test_fraction"):
        _cfg(csv=str(small_csv), target="y", val_fraction=0.5, test_fraction=0.45)
