"""Evaluation report: metrics recomputed from the predictions, both transforms named, CSV, curves, export."""

from __future__ import annotations

import csv
import json

import anndata as ad
import numpy as np
import pytest

from eca_core.metrics import regression_report
from eca_bio.report.evaluate import EvaluateConfig, evaluate_run
from eca_bio.features.feature_set import DataError
from eca_bio.training.train import train_all
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.training.test_train import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pre = make_preprocess_dir(root / "pre", n_slides=3, n_spots=20, n_genes=12)
    cfg = tiny_config(methods=["ridge", "softmax", "eca"], transforms=["egn", "libsize"], final_method=None, seeds=[0, 1])
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
        # overall + per-fold table for each transform, + the λ/τ table for the attention methods
        # overall, per-fold and Moran's I tables for each transform, + the λ/τ table for ECA
        assert report.count(f"| {label} |") == (8 if label == "ECA full" else 6)
    assert "| ECA full | 6 | 1.0" in report  # 3 folds x 2 seeds; λ starts near 1 (plain attention)
    assert "random-init (no pretrained weights)" in report
    summary = json.loads((out / "summary.json").read_text())
    # the reported fold metrics are exactly the means over seeds of the stored predictions' metrics
    genes = json.loads((trained / "train" / "libsize" / "fold_1" / "targets.json").read_text())["genes"]
    reps = []
    for seed in (0, 1):
        z = np.load(trained / "train" / "libsize" / "fold_1" / "eca" / f"seed_{seed}" / "predictions.npz")
        reps.append(regression_report(z["pred"], z["truth"], genes))
    assert reps[0]["pcc_m"] != reps[1]["pcc_m"]  # two seeds, two models
    fold = summary["results"]["libsize"]["eca"]["folds"][1]
    for m in ("pcc_f", "pcc_s", "pcc_m", "mse", "mae"):
        assert fold[m] == pytest.approx(np.mean([r[m] for r in reps]))
        assert fold["seed_values"][m] == pytest.approx([r[m] for r in reps])
    assert fold["seeds"] == [0, 1] and summary["results"]["libsize"]["ridge"]["folds"][1]["seeds"] == [0]
    overall = summary["results"]["libsize"]["eca"]["overall"]["pcc_m"]
    assert overall == pytest.approx(np.mean([f["pcc_m"] for f in summary["results"]["libsize"]["eca"]["folds"]]))
    assert set(summary["claims"]["egn"]) == {"vs_ridge", "vs_softmax"}
    test = summary["claims"]["egn"]["vs_softmax"]["test"]
    assert len(test["per_fold"]) == 3 and all(0 <= f["p"] <= 1 for f in test["per_fold"]) and test["per_fold"][0]["n"] > 0
    assert "3 folds cannot reach p < 0.05 across folds (smallest possible p = 0.25)" in test["verdict"]
    assert "Verdict:" in report and "rank-biserial" in report
    eca = summary["results"]["egn"]["eca"]
    assert -1 <= eca["overall"]["moran_pred"] <= 1 and -1 <= eca["overall"]["moran_truth"] <= 1
    assert "| I predicted | I measured | ratio |" in report and len(eca["folds"][0]["moran_per_gene"]) == 10
    h = eca["folds"][0]["homogeneity"]
    assert set(h) == {"exemplars", "tokens"} and h["tokens"]["elements"] == 4 and h["exemplars"]["elements"] == 3
    assert "| r median |" in report and h["tokens"]["d_rms"] > 0
    assert set(result["claims"]) == {"egn", "libsize"}
    with open(out / "per_gene" / "egn_ridge.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 10 and rows[0].keys() == {"fold", "test_slides", "gene", "pcc"}
    assert (out / "curves" / "egn_eca.png").stat().st_size > 1000
    assert not (out / "curves" / "egn_ridge.png").exists()  # no epochs for ridge
    h5 = sorted((out / "h5ad" / "egn").glob("*.h5ad"))
    assert [p.stem for p in h5] == ["S0", "S1", "S2"]
    a = ad.read_h5ad(h5[0])
    assert a.uns["eca"]["target_transform"] == "egn" and "measured" in a.layers
    assert a.uns["eca"]["note"].startswith("X = predicted, layers['measured'] = measured: log10(1 + counts)")
    assert (a.var["target_max"] >= a.var["target_min"]).all()
    assert (out / "h5ad" / "egn" / "S0_genes.png").is_file()


def test_missing_predictions_is_a_clear_error_and_keeps_old_report(trained):
    out = trained / "evaluate2"
    evaluate_run(trained / "train", out, EvaluateConfig(export_method=None), trained / "pre")
    before = (out / "report.md").read_text()
    victim = trained / "train" / "egn" / "fold_2" / "softmax" / "seed_0" / "predictions.npz"
    victim.rename(victim.with_suffix(".bak"))
    try:
        with pytest.raises(DataError, match=r"fold_2/softmax/seed_0: no predictions.npz"):
            evaluate_run(trained / "train", out, EvaluateConfig(export_method=None), trained / "pre")
    finally:
        victim.with_suffix(".bak").rename(victim)
    assert (out / "report.md").read_text() == before
