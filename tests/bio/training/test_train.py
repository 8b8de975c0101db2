"""Slide-level CV training: folds, outputs, resume, gene-list/bank mismatch, bad input leaves nothing behind."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from eca_bio.model.exemplars import BankMismatchError, ExemplarBank
from eca_bio.model.expression import ModelConfig
from eca_bio.features.feature_set import DataError
from eca_bio.model.checkpoint import load_trained
from eca_bio.training.train import BioTrainConfig, train_all
from tests.bio.fixtures_model import make_preprocess_dir


def tiny_config(**kw) -> BioTrainConfig:
    base = dict(methods=["ridge", "eca"], transforms=["egn"], n_genes=10, k=3, epochs=2, patience=2, min_epochs=1,
                batch_size=32, model=ModelConfig(hidden=8, heads=2), final_method="eca", threads=1, seeds=[0])
    base.update(kw)
    return BioTrainConfig(**base)


def test_train_writes_every_item_and_resumes(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=24, n_genes=12)
    out = tmp_path / "train"
    summary = train_all(tiny_config(), pre, out, progress=False)
    assert summary["trained"] == 7 and summary["skipped"] == 0  # 3 folds x 2 methods + the final model
    folds = json.loads((out / "folds.json").read_text())
    for fold in folds["folds"]:
        targets = json.loads((out / "egn" / f"fold_{fold['fold']}" / "targets.json").read_text())
        assert targets["train_slides"] == fold["train"] and len(targets["genes"]) == 10
        for method in ("ridge", "eca"):
            z = np.load(out / "egn" / f"fold_{fold['fold']}" / method / "seed_0" / "predictions.npz")
            assert z["pred"].shape == (24, 10) and set(z["slide_ids"]) == set(fold["test"])
        hist = (out / "egn" / f"fold_{fold['fold']}" / "eca" / "seed_0" / "history.csv").read_text().splitlines()
        assert hist[0] == "epoch,train_pcc,train_mse,val_pcc,val_mse,lambda_mean,lambda_min,lambda_max,tau_mean,tau_min,tau_max"
        assert len(hist) == 3
        lam_mean, lam_min, lam_max, tau_mean, tau_min, tau_max = map(float, hist[1].split(",")[5:])
        assert 1.0 <= lam_min <= lam_mean <= lam_max <= 2.0  # λ = 1 + softplus, capped at λ_max = 2
        assert 0.3 <= tau_min <= tau_mean <= tau_max <= 1.0  # τ in [τ_min, 1]
        result = json.loads((out / "egn" / f"fold_{fold['fold']}" / "eca" / "seed_0" / "result.json").read_text())
        assert set(result["lambda_tau"]) == {"lambda_mean", "lambda_min", "lambda_max", "tau_mean", "tau_min", "tau_max"}
        assert (out / "egn" / f"fold_{fold['fold']}" / "eca" / "seed_0" / "early_stopping.pt").is_file()
    assert not list(out.rglob(".*tmp*"))
    again = train_all(tiny_config(), pre, out, progress=False)
    assert again["trained"] == 0 and again["skipped"] == 7
    # the final model predicts with its own bank; a bank built with another gene list is refused
    model = load_trained(out / "final")
    assert model.bank.genes == model.spec.genes and model.spec.train_slides == ["S0", "S1", "S2"]
    other = ExemplarBank(model.bank.embeddings, model.bank.targets, model.bank.slide_ids,
                         list(reversed(model.bank.genes)), model.bank.embedding)
    with pytest.raises(BankMismatchError, match="gene list does not match the model's"):
        load_trained(out / "final", bank=other)


def test_fewer_than_two_training_slides_fails_before_writing(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=2, n_spots=10)
    with pytest.raises(DataError, match="has 1 training slide"):
        train_all(tiny_config(), pre, tmp_path / "train", progress=False)
    assert not (tmp_path / "train").exists()


def test_nan_features_and_other_encoder_fail_before_writing(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=10)
    with h5py.File(pre / "slides/S2.h5", "a") as f:
        tok = f["tokens"][:]
        tok[0, 0, 0] = np.inf
        f["tokens"][...] = tok
    with pytest.raises(DataError, match=r"S2\.h5: tokens contain NaN/inf"):
        train_all(tiny_config(), pre, tmp_path / "train", progress=False)
    assert not (tmp_path / "train").exists()
    pre = make_preprocess_dir(tmp_path / "pre2", n_slides=3, n_spots=10)
    with h5py.File(pre / "slides/S1.h5", "a") as f:
        f.attrs["encoder_config"] = json.dumps({"name": "vit_giant"})
    with pytest.raises(DataError, match="embeddings made with vit_giant on 32 um patches"):
        train_all(tiny_config(), pre, tmp_path / "train2", progress=False)
    assert not (tmp_path / "train2").exists()


def test_config_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown"):
        BioTrainConfig(methods=["transformer"])
    with pytest.raises(ValueError, match="unknown"):
        BioTrainConfig(transforms=["log2"])


def test_ridge_cv_picks_alpha_on_the_validation_slide(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=20, n_genes=12)
    cfg = tiny_config(methods=["ridge_cv"], final_method=None, ridge_alphas=[0.01, 1e6])
    train_all(cfg, pre, tmp_path / "train", progress=False)
    res = json.loads((tmp_path / "train" / "egn" / "fold_0" / "ridge_cv" / "seed_0" / "result.json").read_text())
    scores = res["alpha_val_pcc"]
    assert set(scores) == {"0.01", "1000000.0"}
    assert res["alpha"] == float(max(scores, key=scores.get))
    # another alpha grid retrains ridge_cv only; a new method adds its folds and leaves the others alone
    again = train_all(tiny_config(methods=["ridge_cv", "ridge"], final_method=None, ridge_alphas=[1.0]), pre,
                      tmp_path / "train", progress=False)
    assert again["trained"] == 6 and again["skipped"] == 0
    third = train_all(tiny_config(methods=["ridge_cv", "ridge"], final_method=None, ridge_alphas=[1.0], k=5), pre,
                      tmp_path / "train", progress=False)
    assert third["trained"] == 0 and third["skipped"] == 6  # k only matters to the exemplar models


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from eca_bio.cli import main as cli_main

    pre = make_preprocess_dir(tmp_path / "pre", n_slides=2, n_spots=10)
    code = cli_main(["train", "--preprocess", str(pre), "--out", str(tmp_path / "train")])
    assert code == 2
    assert "eca-bio train: error: fold 0 (test ['S0']) has 1 training slide(s)" in capsys.readouterr().err
    assert not (tmp_path / "train").exists()


def test_training_exemplars_come_from_other_training_slides_only(tmp_path):
    from eca_bio.model.exemplars import ExemplarIndex
    from eca_bio.features.feature_set import FeatureSet
    from eca_bio.training.targets import fit_targets
    from eca_bio.training.spots import build_spots, make_bank

    features = FeatureSet(make_preprocess_dir(tmp_path / "pre", n_slides=4, n_spots=15))
    slides = features.slides()
    train, test = slides[:3], slides[3:]
    spec = fit_targets(train, "egn", 10)
    bank = make_bank(train, spec, features.spec)
    assert set(bank.slide_ids) == {"S0", "S1", "S2"}
    index = ExemplarIndex(bank, k=4)
    spots = build_spots(train, spec, index, True)
    assert not (bank.slide_ids[spots.exemplars] == spots.slide_ids[:, None]).any()
    test_spots = build_spots(test, spec, index, True)
    assert set(bank.slide_ids[test_spots.exemplars].ravel()) <= {"S0", "S1", "S2"}


def test_every_neural_method_gets_the_same_validation_search(tmp_path):
    from eca_bio.training.tuning import candidates, method_knobs

    cfg = tiny_config(methods=["ridge", "softmax", "eca", "no_sra"], tune_trials=3, final_method=None, seeds=[0, 1])
    assert method_knobs("softmax") == ("lr", "weight_decay", "dropout")
    assert method_knobs("eca") == ("lr", "weight_decay", "dropout", "tau_min", "beta", "lambda_max", "sra_weight")
    assert method_knobs("no_sra") == ("lr", "weight_decay", "dropout", "tau_min", "beta")
    for m in ("softmax", "eca", "no_sra"):
        c = candidates(m, cfg)
        assert len(c) == 3 and c[0] == {} and c == candidates(m, cfg)  # the defaults first; reproducible draws
        assert all(set(o) == set(method_knobs(m)) for o in c[1:])
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=20, n_genes=12)
    out = tmp_path / "train"
    first = train_all(cfg, pre, out, progress=False)
    tuning = json.loads((out / "egn" / "fold_0" / "eca" / "tuning.json").read_text())
    assert len(tuning["trials"]) == 3 and tuning["val"] == "S1"  # fold 0 tests S0, early-stops on a training slide
    best = max(tuning["trials"], key=lambda t: t["val_pcc_m"])
    assert tuning["chosen"] == best["overrides"]
    for seed in (0, 1):
        result = json.loads((out / "egn" / "fold_0" / "eca" / f"seed_{seed}" / "result.json").read_text())
        assert result["tuned"] == tuning["chosen"] and result["seed"] == seed
    assert not (out / "egn" / "fold_0" / "ridge" / "tuning.json").exists()  # ridge: HEST's fixed alpha
    again = train_all(cfg, pre, out, progress=False)
    assert again["trained"] == 0 and again["skipped"] == first["trained"]
