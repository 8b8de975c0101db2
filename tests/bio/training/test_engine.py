"""The training engine against the per-fit Lightning loop it replaces: same seed, same fit (within float tolerance)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eca_core.runner.config import from_dict
from eca_bio.training import tuning
from eca_bio.training.engine import FitJob, RunSpec, fit_jobs, fit_runs
from eca_bio.training.members import DropoutStream, MemberDropout
from eca_bio.training.fit import fit_neural
from eca_bio.training.spots import predict_spots
from eca_bio.features.feature_set import FeatureSet
from eca_bio.training.targets import fit_targets
from eca_bio.training.spots import fold_spots
from eca_bio.training.train import BioTrainConfig, train_all
from tests.bio.fixtures_model import make_preprocess_dir

CPU = {"accelerator": "cpu", "devices": 1}
TOL = 1e-4


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    pre = make_preprocess_dir(tmp_path_factory.mktemp("engine") / "pre", n_slides=4, n_spots=37)
    features = FeatureSet(pre)
    return features, features.slides(require_expression=True, with_tokens=True)


def _cfg(**kw):
    base = dict(epochs=16, patience=1, min_epochs=4, batch_size=16, n_genes=20, k=4, model={"hidden": 16, "heads": 2, "dropout": 0.1})
    return from_dict(BioTrainConfig, {**base, **kw}, "test")


def _fold(cfg, slides, train=(0, 1, 2), val="S2", test=(3,)):
    features, sl = slides
    train_sl = [sl[i] for i in train]
    spec = fit_targets(train_sl, "egn", cfg.n_genes)
    return fold_spots(cfg, train_sl, val, [sl[i] for i in test], spec, features.spec)


RUNS = [RunSpec(0), RunSpec(1, {"lr": 3e-3, "dropout": 0.3, "tau_min": 0.5, "beta": 2.0, "lambda_max": 1.5, "sra_weight": 1e-2}),
        RunSpec(2, {"dropout": 0.0, "weight_decay": 1e-2})]


@pytest.mark.parametrize("method", ["eca", "meanpool"])
def test_every_member_is_the_fit_of_a_separate_per_fit_run(slides, tmp_path, method):
    cfg = _cfg(lr=0.01)  # a large step: validation PCC stalls, so early stopping and min_epochs are exercised
    fs = _fold(cfg, slides)
    fits = fit_runs(method, cfg, RUNS, fs.fit, fs.val, fs.everything, fs.bank)
    stopped_early = False
    for run, fitted in zip(RUNS, fits):
        task, history, best_epoch = fit_neural(method, tuning.apply(cfg, run.overrides), fs.fit, fs.val, fs.everything, fs.bank,
                                               tmp_path / f"seed{run.seed}", CPU, run.seed)
        assert len(fitted.history) == len(history) and fitted.best_epoch == best_epoch
        stopped_early |= len(history) < cfg.epochs
        for ours, theirs in zip(fitted.history, history):
            assert ours.keys() == theirs.keys()
            for col, value in theirs.items():
                assert ours[col] == pytest.approx(value, abs=TOL), (run.seed, ours["epoch"], col)
        assert fitted.hparams == dict(task.hparams)
        ours = predict_spots(fitted.model(), fs.test, fs.bank)
        np.testing.assert_allclose(ours, predict_spots(task.model, fs.test, fs.bank), atol=TOL)  # the refit model
    assert stopped_early  # early stopping and min_epochs were exercised, not only max epochs


def test_kept_model_without_refit_is_the_early_stopped_best(slides, tmp_path):
    cfg = _cfg(refit=False)
    fs = _fold(cfg, slides)
    fitted = fit_runs("softmax", cfg, RUNS[:1], fs.fit, fs.val, None, fs.bank)[0]
    task, history, best_epoch = fit_neural("softmax", cfg, fs.fit, fs.val, None, fs.bank, tmp_path, CPU, 0)
    assert fitted.best_epoch == best_epoch
    np.testing.assert_allclose(predict_spots(fitted.model(), fs.test, fs.bank), predict_spots(task.model, fs.test, fs.bank), atol=TOL)


def test_folds_of_different_sizes_in_one_ensemble_equal_each_fold_alone(slides):
    cfg = _cfg(epochs=5)
    a = _fold(cfg, slides)
    b = _fold(cfg, slides, train=(1, 2, 3), val="S3", test=(0,))
    _, sl = slides
    b.fit.features = b.fit.features[:-5]  # another size: a cohort of its own, trained in the same loop
    for name in ("tokens", "targets", "exemplars", "slide_ids", "centres"):
        setattr(b.fit, name, getattr(b.fit, name)[:-5])
    together = fit_jobs("eca", cfg, [FitJob(RUNS[:2], a.fit, a.val, a.everything, a.bank),
                                     FitJob(RUNS[1:], b.fit, b.val, b.everything, b.bank)])
    alone = [fit_runs("eca", cfg, RUNS[:2], a.fit, a.val, a.everything, a.bank),
             fit_runs("eca", cfg, RUNS[1:], b.fit, b.val, b.everything, b.bank)]
    for job_t, job_a, fs in zip(together, alone, (a, b)):
        for t, s in zip(job_t, job_a):
            assert [h["val_pcc"] for h in t.history] == pytest.approx([h["val_pcc"] for h in s.history], abs=1e-5)
            np.testing.assert_allclose(predict_spots(t.model(), fs.test, fs.bank), predict_spots(s.model(), fs.test, fs.bank), atol=1e-5)


def test_member_dropout_draws_from_its_own_stream_and_is_identity_in_eval():
    x = torch.ones(64, 32)
    drop = MemberDropout(0.25, DropoutStream(7)).train()
    y = drop(x)
    kept = y != 0
    assert 0.6 < kept.float().mean() < 0.9 and torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert torch.equal(MemberDropout(0.25, DropoutStream(7)).train()(x), y)  # the same seed draws the same mask
    assert not torch.equal(MemberDropout(0.25, DropoutStream(8)).train()(x), y)
    assert torch.equal(MemberDropout(0.0, DropoutStream(7)).train()(x), x) and torch.equal(drop.eval()(x), x)


def test_train_stage_writes_the_same_items_with_either_loop(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=4, n_spots=30)
    common = dict(methods=["ridge", "eca"], transforms=["egn"], cv="fixed", test_slides=["S3"], seeds=[0, 1], tune_trials=2,
                  epochs=5, patience=2, min_epochs=2, batch_size=16, n_genes=15, k=4, final_method=None,
                  model={"hidden": 16, "heads": 2})
    outs = {}
    for engine in ("vectorised", "per_fit"):
        cfg = from_dict(BioTrainConfig, {**common, "engine": engine}, "test")
        summary = train_all(cfg, pre, tmp_path / engine, CPU, progress=False)
        assert summary["trained"] == 3  # ridge, eca seed 0 and seed 1
        outs[engine] = tmp_path / engine / "egn" / "fold_0"
    ours, theirs = (json.loads((outs[e] / "eca" / "tuning.json").read_text()) for e in ("vectorised", "per_fit"))
    assert ours["chosen"] == theirs["chosen"] and len(ours["trials"]) == 2
    assert [t["val_pcc_m"] for t in ours["trials"]] == pytest.approx([t["val_pcc_m"] for t in theirs["trials"]], abs=TOL)
    for seed in (0, 1):
        a, b = (np.load(outs[e] / "eca" / f"seed_{seed}" / "predictions.npz") for e in ("vectorised", "per_fit"))
        np.testing.assert_allclose(a["pred"], b["pred"], atol=TOL)
        ra, rb = (json.loads((outs[e] / "eca" / f"seed_{seed}" / "result.json").read_text()) for e in ("vectorised", "per_fit"))
        assert ra["key"] == rb["key"] and ra["epochs"] == rb["epochs"] and ra["tuned"] == rb["tuned"]
    assert (outs["vectorised"] / "eca" / "seed_0" / "early_stopping.pt").is_file()
    again = train_all(from_dict(BioTrainConfig, {**common, "engine": "per_fit"}, "test"), pre, tmp_path / "vectorised", CPU, progress=False)
    assert again["trained"] == 0  # the loop is a runtime choice: the other one's items are up to date
