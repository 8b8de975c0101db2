"""The per-fit Lightning loop (the engine's reference): early stopping on the held-out slide, the refit, the score."""

import pytest
import torch

from eca_bio.training.engine import best_validation
from eca_bio.training.fit import fit_neural, validation_score
from eca_bio.training.spots import fold_spots
from eca_bio.training.targets import fit_targets
from eca_bio.features.feature_set import FeatureSet
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.training.test_train import tiny_config

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    features = FeatureSet(make_preprocess_dir(tmp_path_factory.mktemp("fit") / "pre", n_slides=3, n_spots=20, n_genes=12))
    slides = features.slides(require_expression=True)
    cfg = tiny_config(epochs=4, patience=1, min_epochs=1, batch_size=8)
    spec = fit_targets(slides[:2], "egn", cfg.n_genes)
    return cfg, fold_spots(cfg, slides[:2], "S1", slides[2:], spec, features.spec)


def test_early_stopping_then_refit_for_the_best_epoch(fold, tmp_path):
    cfg, fs = fold
    task, history, best_epoch = fit_neural("eca", cfg, fs.fit, fs.val, fs.everything, fs.bank, tmp_path, CPU, seed=0)
    assert 1 <= len(history) <= cfg.epochs and [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    score, epoch = best_validation(history)
    assert epoch == best_epoch and score == max(h["val_pcc"] for h in history)
    assert task.current_epoch == best_epoch  # the refit ran exactly the early-stopped number of epochs


def test_without_refit_the_best_checkpoint_is_returned(fold, tmp_path):
    cfg, fs = fold
    cfg = tiny_config(epochs=4, patience=1, min_epochs=1, batch_size=8, refit=False)
    task, history, best_epoch = fit_neural("eca", cfg, fs.fit, fs.val, fs.everything, fs.bank, tmp_path, CPU, seed=0)
    assert best_epoch == best_validation(history)[1]
    ckpt = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == best_epoch - 1  # Lightning counts epochs from 0, the history from 1
    for name, value in task.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][name])


def test_validation_score_is_the_best_validation_of_the_same_fit(fold, tmp_path):
    cfg, fs = fold
    _, history, _ = fit_neural("softmax", cfg, fs.fit, fs.val, fs.everything, fs.bank, tmp_path, CPU, seed=1)
    score, epoch = validation_score("softmax", cfg, fs.fit, fs.val, fs.bank, CPU, seed=1)
    assert (score, epoch) == pytest.approx(best_validation(history), abs=1e-5)
