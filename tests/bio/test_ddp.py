"""`eca-bio demo` on 2 CPU processes (gloo, DDP) equals the 1-process run: same rows, features, windows, folds and
metrics, for the frozen-feature model and for EGN trained end to end on the spot windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--slides", "3", "--grid", "6", "--set", "train.methods=[ridge, eca, egn_eca]", "--set", "train.transforms=[egn]",
        "--set", "preprocess.window_px=32", "--set", "train.egn.preset=egn-tiny", "--set", "train.egn.epochs=2",
        "--set", "train.epochs=2", "--set", "train.n_genes=20", "--set", "preprocess.batch_size=8", "--num-workers", "0",
        "--accelerator", "cpu"]


def _demo(run_dir: Path, extra: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "eca_bio.cli", "demo", "--run-dir", str(run_dir), *TINY, *extra],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = _demo(root / "one", [])
    two = _demo(root / "two", ["--devices", "2", "--strategy", "ddp"])
    return root / "one", root / "two", one, two


def test_tiles_are_sharded_and_files_written_once(runs):
    one, two, _, out = runs
    assert out.stdout.count("demo finished") == 1  # rank 1 writes and prints nothing of its own
    assert "embedded 108 patches of 3 slide(s)" in out.stdout and "on 2 ranks (tiles per rank: [56, 52])" in out.stdout
    for stage in ("preprocess", "train", "evaluate", "predict"):
        assert json.loads((two / f"{stage}.done.json").read_text())["world_size"] == 2
    assert not list(two.rglob("*.tmp-*")) and not (two / ".eca.lock").exists()


def test_same_rows_and_features_in_every_h5(runs):
    one, two, _, _ = runs
    files = sorted(p.relative_to(one) for p in one.rglob("*.h5") if "data" not in p.parts and ".windows" not in p.suffixes)
    assert [str(f) for f in files] == ["predict/preprocess/slides/SYN_new.h5", "preprocess/slides/SYN1.h5",
                                       "preprocess/slides/SYN2.h5", "preprocess/slides/SYN3.h5"]
    for rel in files:
        with h5py.File(one / rel) as a, h5py.File(two / rel) as b:
            np.testing.assert_array_equal(a["coords"][()], b["coords"][()])
            if "barcodes" in a:
                assert list(a["barcodes"].asstr()[()]) == list(b["barcodes"].asstr()[()])
            for key in ("features", "tokens"):
                x, y = a[key][()].astype(np.float32), b[key][()].astype(np.float32)
                np.testing.assert_allclose(y, x, rtol=1e-2, atol=1e-3 * float(np.abs(x).max()))
    windows = sorted(p.relative_to(one) for p in (one / "preprocess/slides").glob("*.windows.h5"))
    assert [w.name for w in windows] == ["SYN1.windows.h5", "SYN2.windows.h5", "SYN3.windows.h5"]
    for rel in windows:  # uint8 pixels cut by one rank from the same slide: exact
        with h5py.File(one / rel) as a, h5py.File(two / rel) as b:
            np.testing.assert_array_equal(a["windows"][()], b["windows"][()])


def test_same_folds_and_report(runs):
    one, two, _, _ = runs
    assert json.loads((one / "train/folds.json").read_text())["folds"] == json.loads((two / "train/folds.json").read_text())["folds"]
    a = json.loads((one / "evaluate/summary.json").read_text())["results"]
    b = json.loads((two / "evaluate/summary.json").read_text())["results"]
    assert {t: sorted(m) for t, m in a.items()} == {t: sorted(m) for t, m in b.items()}
    for t in a:
        for m in a[t]:
            for key in ("pcc_f", "pcc_s", "pcc_m", "mse", "mae"):
                assert b[t][m]["overall"][key] == pytest.approx(a[t][m]["overall"][key], abs=2e-3), (t, m, key)
