"""The validation-slide search: each method draws from its own knobs, the same draws on every run."""

from __future__ import annotations

from eca_bio.training import tuning
from eca_bio.configs import BioTrainConfig


def test_each_method_searches_its_own_knobs_defaults_first():
    cfg = BioTrainConfig(tune_trials=4)
    assert tuning.method_knobs("meanpool") == ("lr", "weight_decay", "dropout")
    assert tuning.method_knobs("softmax") == ("lr", "weight_decay", "dropout")
    assert tuning.method_knobs("eca") == ("lr", "weight_decay", "dropout", "tau_min", "beta", "lambda_max", "sra_weight")
    assert tuning.method_knobs("no_sra") == ("lr", "weight_decay", "dropout", "tau_min", "beta")
    assert tuning.method_knobs("no_dats") == ("lr", "weight_decay", "dropout", "lambda_max", "sra_weight")
    eca = tuning.candidates("eca", cfg)
    assert len(eca) == 4 and eca[0] == {} and all(set(c) == set(tuning.method_knobs("eca")) for c in eca[1:])
    assert eca == tuning.candidates("eca", cfg)  # seeded by the method's name: a re-run tries the same ones
    assert tuning.candidates("ridge", cfg) == [{}] and tuning.candidates("eca", BioTrainConfig(tune_trials=1)) == [{}]


def test_a_trial_sets_the_config_model_and_loss():
    cfg = BioTrainConfig()
    tuned = tuning.apply(cfg, {"lr": 3e-3, "dropout": 0.3, "tau_min": 0.5, "sra_weight": 1e-2})
    assert (tuned.lr, tuned.model.dropout, tuned.model.tau_min, tuned.loss.sra_weight) == (3e-3, 0.3, 0.5, 1e-2)
    assert (cfg.lr, cfg.model.dropout) == (1e-3, 0.1)  # the original is untouched
