"""Evaluation report: metrics recomputed from the predictions, both transforms named, CSV, curves, export."""

from __future__ import annotations

import csv
import json

import anndata as ad
import numpy as np
import pytest

from eca_core.metrics import regression_report
from eca_bio.evaluate import EvaluateConfig, evaluate_run
from eca_bio.targets import DataError
from eca_bio.train import train_all
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.test_train import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pre = make_preprocess_dir(root / "pre", n_slides=3, n_spots=20, n_genes=12)
    cfg = tiny_config(methods=["ridge", "softmax", "eca"], transforms=["egn", "libsize"], final_method=None)
    train_all(cfg, pre, root / "train", progress=False)
    return root


def test_report_side_by_side_with_transforms_named(trained):
    out = trained / "evaluate"
    result = evaluate_run(trained / "train", out, EvaluateConfig(export_images=False), trained / "pre")
    report = (out / "report.md").read_text()
    for transform in ("egn", "libsize"):
        assert f"## Target transform: `{transform}`" in report
        assert f"| method ({transform}) | PCC@F | PCC@S | PCC@M | MSE | MAE |" in report
    for label in ("ridge (PCA-256, HEST)", "softmax attention", "ECA full"):
        assert report.count(f"| {label} |") == 4  # overall + per-fold table, for each transform
    assert "random-init (no pretrained weights)" in report
    summary = json.loads((out / "summary.json").read_text())
    # the reported fold metrics are exactly the metrics of the stored predictions
    z = np.load(trained / "train" / "libsize" / "fold_1" / "eca" / "predictions.npz")
    genes = json.loads((trained / "train" / "libsize" / "fold_1" / "targets.json").read_text())["genes"]
    rep = regression_report(z["pred"], z["truth"], genes)
    fold = summary["results"]["libsize"]["eca"]["folds"][1]
    for m in ("pcc_f", "pcc_s", "pcc_m", "mse", "mae"):
        assert fold[m] == pytest.approx(rep[m])
    overall = summary["results"]["libsize"]["eca"]["overall"]["pcc_m"]
    assert overall == pytest.approx(np.mean([f["pcc_m"] for f in summary["results"]["libsize"]["eca"]["folds"]]))
    assert set(summary["claims"]["egn"]) == {"beats_ridge", "vs_softmax"}
    assert set(result["claims"]) == {"egn", "libsize"}
    with open(out / "per_gene" / "egn_ridge.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 10 and rows[0].keys() == {"fold", "test_slides", "gene", "pcc"}
    assert (out / "curves" / "egn_eca.png").stat().st_size > 1000
    assert not (out / "curves" / "egn_ridge.png").exists()  # no epochs for ridge
    h5 = sorted((out / "h5ad" / "egn").glob("*.h5ad"))
    assert [p.stem for p in h5] == ["S0", "S1", "S2"]
    a = ad.read_h5ad(h5[0])
    assert a.uns["eca"]["target_transform"] == "egn" and "truth" in a.layers
    assert (out / "h5ad" / "egn" / "S0_genes.png").is_file()


def test_missing_predictions_is_a_clear_error_and_keeps_old_report(trained):
    out = trained / "evaluate2"
    evaluate_run(trained / "train", out, EvaluateConfig(export_method=None), trained / "pre")
    before = (out / "report.md").read_text()
    victim = trained / "train" / "egn" / "fold_2" / "softmax" / "predictions.npz"
    victim.rename(victim.with_suffix(".bak"))
    try:
        with pytest.raises(DataError, match=r"fold_2/softmax: no predictions.npz"):
            evaluate_run(trained / "train", out, EvaluateConfig(export_method=None), trained / "pre")
    finally:
        victim.with_suffix(".bak").rename(victim)
    assert (out / "report.md").read_text() == before
