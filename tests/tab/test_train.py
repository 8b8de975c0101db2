"""FT-Transformer fits: the variants' models, one fit's selection rule, resume, the report and its paired tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eca_core.runner.config import from_dict
from eca_core.convert import ECARTDLAttention
from eca_tab.evaluate import TabEvaluateConfig, evaluate, paired_tests
from eca_tab.model import FTConfig, build_ft_transformer
from eca_tab.preprocess import PreprocessConfig, prepare
from eca_tab.train import TabTrainConfig, train_all

pytest.importorskip("rtdl_revisiting_models")
TINY = {"n_blocks": 1, "d_block": 16, "attention_n_heads": 2}


@pytest.fixture
def prepared(small_csv):
    return prepare(from_dict(PreprocessConfig, {"csv": str(small_csv), "target": "y"}, "test"))


def _cfg(**kw) -> TabTrainConfig:
    base = {"methods": ["softmax", "eca"], "seeds": [0, 1], "epochs": 6, "patience": 3, "batch_size": 32, "lr": 3e-3,
            "progress_bar": False, "model": TINY}
    return from_dict(TabTrainConfig, base | kw, "test")


def test_variants_swap_the_packages_attention():
    soft = build_ft_transformer(4, [3], FTConfig(**TINY), "softmax")
    assert type(soft).__module__ == "rtdl_revisiting_models" and not any(isinstance(m, ECARTDLAttention) for m in soft.modules())
    for name, dats, sra in (("eca", True, True), ("no_sra", True, False), ("no_dats", False, True), ("no_dnpl", True, True)):
        attn = build_ft_transformer(4, [3], FTConfig(**TINY), name).backbone.blocks[0]["attention"]
        assert isinstance(attn, ECARTDLAttention)
        assert (attn.temperature is not None, attn.residual_scale is not None) == (dats, sra), name


def test_fits_select_on_validation_and_resume(tmp_path, prepared):
    cfg = _cfg()
    summary = train_all(prepared, "data-a", cfg, tmp_path, log=lambda s: None)
    assert [f["dir"] for f in summary["fits"]] == ["softmax/seed0", "softmax/seed1", "eca/seed0", "eca/seed1"]
    for f in summary["fits"]:
        r = json.loads((tmp_path / f["dir"] / "result.json").read_text())
        vals = [h["val_mse"] for h in r["history"]]
        assert r["best_epoch"] == int(np.argmin(vals)) and r["val"]["mse"] == pytest.approx(min(vals), rel=1e-5)
        assert r["epochs_run"] == len(r["history"]) <= 6
        z = np.load(tmp_path / f["dir"] / "predictions.npz")
        truth = z["test_truth"]
        assert len(truth) == 48 and r["test"]["mae"] == pytest.approx(np.mean(np.abs(z["test_pred"] - truth)))
        assert r["test"]["pcc"] > 0.5  # y = 3a − 2b + ... is learnable in a few epochs
    s0 = json.loads((tmp_path / "eca/seed0/result.json").read_text())
    s1 = json.loads((tmp_path / "eca/seed1/result.json").read_text())
    assert s0["test"]["mse"] != s1["test"]["mse"]  # two seeds, two models
    stamp = (tmp_path / "eca/seed0/model.pt").stat().st_mtime_ns
    again = train_all(prepared, "data-a", cfg, tmp_path, log=lambda s: None)
    assert (tmp_path / "eca/seed0/model.pt").stat().st_mtime_ns == stamp  # finished fits are not redone
    assert again["fits"][2]["test"] == summary["fits"][2]["test"]
    train_all(prepared, "data-b", cfg, tmp_path, log=lambda s: None)  # other data: redone
    assert (tmp_path / "eca/seed0/model.pt").stat().st_mtime_ns != stamp
    (tmp_path / "softmax/seed0/predictions.npz").write_bytes(b"changed")  # a damaged output: redone
    train_all(prepared, "data-b", cfg, tmp_path, log=lambda s: None)
    assert np.load(tmp_path / "softmax/seed0/predictions.npz")["test_pred"].shape == (48,)


def test_report_table_tests_and_curves(tmp_path, prepared):
    train_all(prepared, "d", _cfg(methods=["softmax", "eca", "no_dnpl"]), tmp_path / "train", log=lambda s: None)
    report = evaluate(tmp_path / "train", tmp_path / "eval", TabEvaluateConfig())
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| method | MAE | MSE | PCC | best epochs | s / epoch |" in text and "paper" not in text.split("\n\n")[2]
    for label in ("FT-Transformer", "+ ECA (full)", "+ ECA (w/o DNPL)"):
        assert f"| {label} |" in text
    assert "Split: random (seed 0), train 154 / validation 38 / test 48 rows." in text
    t = report["paired_tests"]["eca"]
    assert set(t) == {"pcc", "mae"} and len(t["pcc"]["per_unit"]) == 2
    assert "2 seeds cannot reach p < 0.05 across seeds (smallest possible p = 0.5)" in t["pcc"]["verdict"]
    e = report["methods"]["eca"]["metrics"]["pcc"]
    assert e["mean"] == pytest.approx(np.mean(e["values"])) and e["std"] == pytest.approx(np.std(e["values"], ddof=1))
    assert report["epoch_cost_ratio"]["softmax"] == 1.0 and report["epoch_cost_ratio"]["eca"] > 0
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pcc_items_average_to_the_pcc_difference(tmp_path):
    """Within a seed, the PCC test pairs per-row z·z products: their mean difference is exactly the PCC difference."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    fits = []
    for method, noise in (("eca", 0.5), ("softmax", 1.0)):
        pred = truth + rng.normal(0, noise, 200)
        fits.append({"method": method, "seed": 0, "test_pred": pred, "test_truth": truth,
                     "test": {"pcc": float(np.corrcoef(pred, truth)[0, 1]), "mae": float(np.mean(np.abs(pred - truth)))}})
    t = paired_tests(fits, "eca", "softmax")
    assert t["pcc"]["per_unit"][0]["mean_diff"] == pytest.approx(fits[0]["test"]["pcc"] - fits[1]["test"]["pcc"])
    assert t["pcc"]["per_unit"][0]["p"] < 0.05 and t["pcc"]["per_unit"][0]["median_diff"] > 0
    assert t["mae"]["across_units"]["mean_diff"] == pytest.approx(fits[1]["test"]["mae"] - fits[0]["test"]["mae"])


def test_paper_columns_for_a_preset(tmp_path, prepared):
    prepared.schema["dataset"] = "appliances"
    train_all(prepared, "d", _cfg(methods=["softmax"], seeds=[0], epochs=1), tmp_path / "train", log=lambda s: None)
    evaluate(tmp_path / "train", tmp_path / "eval")
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| method | MAE | MSE (×10^3) | PCC | best epochs | s / epoch | paper MAE | paper MSE | paper PCC |" in text
    assert "| 39.333 | 6.108 | 0.556 |" in text
