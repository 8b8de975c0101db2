"""EGN trained end to end as bio methods: windows in, items written and resumed, its keys, its schedule, bad input."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from eca_bio.configs import BioTrainConfig, EGNConfig, EvaluateConfig
from eca_bio.features.feature_set import DataError, FeatureSet
from eca_bio.features.preprocess import run_preprocess
from eca_bio.model.egn import EGN
from eca_bio.model.expression import model_from_hparams
from eca_bio.report.evaluate import evaluate_run
from eca_bio.training.spots import fold_spots, predict_spots
from eca_bio.training.targets import TargetSpec
from eca_bio.training.task import egn_lr_factor
from eca_bio.training.train import item_config, train_all
from tests.bio.conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


def egn_config(**kw) -> BioTrainConfig:
    base = dict(methods=["ridge", "egn", "egn_eca"], transforms=["egn"], n_genes=10, seeds=[0], final_method="eca",
                threads=1, patience=3, min_epochs=1, egn=EGNConfig(preset="egn-tiny", epochs=3))
    return BioTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    """Three 8 x 8 legacy-ST sections preprocessed with 32 px spot windows."""
    root = tmp_path_factory.mktemp("egn")
    for i in range(3):
        make_legacy_st(root / "st" / f"S{i}", section=f"S{i}", seed=i + 1, n=8, spacing_px=60.0, origin=120.0)
    run_preprocess(cfg_for(st_dir=str(root / "st"), token_grid=1, window_px=32), root / "pre", CPU, progress=False)
    return root


def test_egn_methods_train_on_windows_write_models_and_resume(sections, tmp_path):
    out = tmp_path / "train"
    summary = train_all(egn_config(), sections / "pre", out, progress=False)
    assert summary["trained"] == 3 * 3 + 1 and summary["skipped"] == 0  # 3 folds x 3 methods + the final model (eca)
    fs = FeatureSet(sections / "pre")
    slides = {s.slide_id: s for s in fs.slides(require_expression=True, with_windows=True)}
    for method in ("egn", "egn_eca"):
        item = out / "egn" / "fold_0" / method / "seed_0"
        result = json.loads((item / "result.json").read_text())
        ckpt = torch.load(item / "model.pt", map_location="cpu", weights_only=True)  # plain tensors and values
        model = model_from_hparams(ckpt["hparams"], ckpt["state_dict"])
        assert isinstance(model, EGN) and model.image_size == 32 and not ckpt["use_tokens"]
        assert result["egn"]["parameters"] == sum(p.numel() for p in model.parameters())
        assert result["egn"] | {"preset": "egn-tiny", "epochs": 3, "k": 4, "window_px": 32} == result["egn"]
        # the stored predictions are the reloaded model's on the test windows (same exemplars, same rows)
        fold = json.loads((out / "folds.json").read_text())["folds"][0]
        cfg = egn_config().for_method(method)
        spec_dict = json.loads((out / "egn" / "fold_0" / "targets.json").read_text())
        spec = TargetSpec.from_dict(spec_dict)
        f = fold_spots(cfg, [slides[s] for s in fold["train"]], fold["val"], [slides[s] for s in fold["test"]], spec,
                       fs.spec, use_windows=True)
        assert f.test.windows.shape == (64, 32, 32, 3) and f.test.exemplars.shape[1] == 4
        stored = np.load(item / "predictions.npz")["pred"]
        np.testing.assert_allclose(predict_spots(model, f.test, f.bank), stored, rtol=1e-4, atol=1e-5)
        header = (item / "history.csv").read_text().splitlines()[0]
        assert ("lambda_mean" in header) == (method == "egn_eca")  # ECA's λ / τ reach the history, EGN has none
    again = train_all(egn_config(), sections / "pre", out, progress=False)
    assert again["trained"] == 0 and again["skipped"] == 10
    evaluate_run(out, tmp_path / "eval", EvaluateConfig(primary="egn_eca", softmax="egn", references=["ridge"], export_method="egn_eca"),
                 sections / "pre")
    report = (tmp_path / "eval" / "report.md").read_text()
    size = json.loads((out / "egn" / "fold_0" / "egn" / "seed_0" / "result.json").read_text())["egn"]["parameters"]
    assert "- EGN end to end: preset `egn-tiny` on 32 px spot windows, up to 3 epochs, batch 16" in report
    assert f"egn {size:,}" in report and "| EGN+ECA (ViT attention) |" in report and "egn_eca PCC > egn PCC" in report


def test_changed_windows_retrain_egn_but_not_the_frozen_feature_methods(sections, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(sections / "pre", pre)
    out = tmp_path / "train"
    cfg = egn_config(methods=["ridge", "egn"], final_method=None)
    assert train_all(cfg, pre, out, progress=False)["trained"] == 6
    entry = FeatureSet(pre).entries[0]
    with h5py.File(pre / entry["windows"], "a") as f:
        w = f["windows"][()]
        f["windows"][...] = 255 - w  # other pixels, same shape: the file's content is in EGN's key
    again = train_all(cfg, pre, out, progress=False)
    assert again["trained"] == 3 and again["skipped"] == 3  # every egn fold again, ridge up to date


def test_keys_separate_egn_settings_from_the_frozen_feature_methods():
    base = egn_config()
    other = replace(base, egn=EGNConfig(preset="egn-cpu-small"))
    assert item_config(base, "eca") == item_config(other, "eca")  # EGN's size never retrains the frozen-feature model
    assert item_config(base, "egn") != item_config(other, "egn")
    assert item_config(base, "egn")["epochs"] == 3 and item_config(base, "egn")["k"] == 4  # the preset's, as trained
    assert item_config(replace(base, lr=0.5), "egn") == item_config(base, "egn")  # EGN's lr is egn.lr


def test_egn_schedule_is_cosine_warm_restarts_with_a_fifth_floor():
    cycle, warmup = 10, 4
    f = [egn_lr_factor(s, cycle, warmup) for s in range(2 * cycle)]
    assert f[0] == pytest.approx(0.2) and f[2] == pytest.approx(0.6) and f[warmup] == pytest.approx(1.0)
    assert f[7] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert f[cycle:] == pytest.approx(f[:cycle])  # restarts every cycle
    assert min(f) >= 0.2 - 1e-12 and max(f) <= 1.0 + 1e-12


def test_missing_windows_and_egn_final_model_are_refused_in_one_line(tmp_path):
    root = tmp_path
    for i in range(3):
        make_legacy_st(root / "st" / f"S{i}", section=f"S{i}", seed=i + 1, n=4)
    run_preprocess(cfg_for(st_dir=str(root / "st"), token_grid=1), root / "pre", CPU, progress=False)
    with pytest.raises(DataError, match=r"slide S0 has no spot windows \(run preprocess with window_px set\)"):
        train_all(egn_config(), root / "pre", root / "train", progress=False)
    assert not (root / "train").exists()
    with pytest.raises(ValueError, match="final_method 'egn' .*predict embeds tiles, it cuts no windows"):
        egn_config(final_method="egn")
    with pytest.raises(ValueError, match="train.egn.preset 'egn-huge' is not one of"):
        EGNConfig(preset="egn-huge")


def test_prepare_resizes_and_normalises_like_egn():
    model = EGN(image_size=16, patch_size=8, dim=16, depth=2, heads=2, mlp_dim=16, bhead=2, bdim=4, mdim=8, n_genes=5)
    windows = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)
    x = model.prepare(windows)
    assert x.shape == (2, 3, 16, 16)
    want = (128 / 255 - torch.tensor([0.5476, 0.5218, 0.6881])) / torch.tensor([0.2461, 0.2101, 0.1649])
    torch.testing.assert_close(x[0, :, 5, 5], want, rtol=1e-5, atol=1e-5)
