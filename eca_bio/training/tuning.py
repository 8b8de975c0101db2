"""The same small validation-slide search for every neural method, so no method wins by its defaults.

Each method tries ``tune_trials`` configurations: the defaults, then random draws (seeded by the
method's name, so a re-run tries the same ones) from the grid of *its own* knobs: learning rate,
weight decay and dropout for every neural method; ``tau_min`` and ``beta`` where DATS is on;
``lambda_max`` and the SRA penalty weight where SRA is on. Every trial is fitted on the fold's
fitting slides with early stopping on the held-out training slide; the configuration with the best
validation PCC@M wins. The test slides are never looked at. Ridge keeps its own search over alpha
(``ridge_cv``) or HEST's fixed alpha (``ridge``).
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from eca_bio.methods import METHODS
from eca_bio.model.expression import RidgeBaseline
from eca_bio.training.spots import epoch_scores
from eca_bio.features.feature_set import SlideData
from eca_bio.training.targets import TargetSpec, make_targets
from eca_core.variants import layer_config

if TYPE_CHECKING:
    from eca_bio.configs import BioTrainConfig

SHARED_KNOBS = ("lr", "weight_decay", "dropout")
DATS_KNOBS = ("tau_min", "beta")
SRA_KNOBS = ("lambda_max", "sra_weight")


def method_knobs(method: str) -> tuple[str, ...]:
    """The knobs that exist for ``method`` (ECA's only where its DATS / SRA are on)."""
    overrides, _ = METHODS[method]
    knobs = SHARED_KNOBS
    if overrides.get("pool") == "attention":
        eca = layer_config(overrides["attention"])
        knobs += DATS_KNOBS if eca.use_dats else ()
        knobs += SRA_KNOBS if eca.use_sra else ()
    return knobs


def candidates(method: str, cfg: BioTrainConfig) -> list[dict[str, float]]:
    """``tune_trials`` configurations of ``method``: {} (the defaults) first, then seeded random grid draws."""
    if cfg.tune_trials <= 1 or METHODS[method] is None:
        return [{}]
    knobs = [k for k in method_knobs(method) if cfg.tune_grid.get(k)]
    grid = [dict(zip(knobs, values)) for values in itertools.product(*(cfg.tune_grid[k] for k in knobs))]
    rng = np.random.default_rng(zlib.crc32(method.encode()))
    order = rng.permutation(len(grid))
    return [{}] + [grid[i] for i in order[: cfg.tune_trials - 1]]


def apply(cfg: BioTrainConfig, overrides: dict[str, float]) -> BioTrainConfig:
    """``cfg`` with one trial's values: lr / weight_decay on the config, dropout and DATS/SRA knobs on the model,
    the SRA penalty weight on the loss."""
    top = {k: v for k, v in overrides.items() if k in ("lr", "weight_decay")}
    model = {k: v for k, v in overrides.items() if k in ("dropout", "tau_min", "beta", "lambda_max")}
    loss = {"sra_weight": overrides["sra_weight"]} if "sra_weight" in overrides else {}
    return replace(cfg, **top, model=replace(cfg.model, **model), loss=replace(cfg.loss, **loss))


def select_ridge_alpha(cfg: BioTrainConfig, train_sl: list[SlideData], val_id: str | None, spec: TargetSpec,
                      result: dict[str, Any]) -> float:
    """The ``ridge_alphas`` value with the best PCC@M on the held-out training slide (recorded in ``result``)."""
    fit = [s for s in train_sl if s.slide_id != val_id]
    val = [s for s in train_sl if s.slide_id == val_id]
    x_fit = np.concatenate([s.features for s in fit])
    y_fit = np.concatenate([make_targets(s, spec)[0] for s in fit])
    x_val = np.concatenate([s.features for s in val])
    y_val = np.concatenate([make_targets(s, spec)[0] for s in val])
    scores = {a: epoch_scores(RidgeBaseline(cfg.ridge_components, a).fit(x_fit, y_fit).predict(x_val), y_val)[0]
              for a in cfg.ridge_alphas}
    result["alpha_val_pcc"] = {str(a): v for a, v in scores.items()}
    return max(scores, key=lambda a: -np.inf if np.isnan(scores[a]) else scores[a])
