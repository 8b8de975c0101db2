"""Evaluation metrics on numpy arrays: per-output Pearson, PCC@F/S/M, MSE, MAE (DESIGN §3)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CONSTANT_RTOL = 1e-6  # spread (std) at most this fraction of a column's scale, max(1, max|value|): constant, no PCC
WORST_SCORE = {True: -1.0, False: 1e9}  # the worst finite score: higher is better (a correlation), or lower (an error)


def constant_columns(values: np.ndarray) -> np.ndarray:
    """True for each column with no defined correlation: std <= CONSTANT_RTOL · max(1, max|value| of the column). The metrics, the
    diagnostics and the losses' column mask (``eca_core.losses``) use this one rule."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    if v.size == 0:
        return np.ones(v.shape[1:], dtype=bool)
    return v.std(0) <= CONSTANT_RTOL * np.maximum(1.0, np.abs(v).max(0))


def finite_score(value: float, higher_is_better: bool = True) -> float:
    """A score early stopping can monitor: NaN or inf (no defined score) is the worst finite value, so such an epoch is
    never chosen and Lightning's finite-value check never ends a run (−1 for a correlation, 1e9 for an error)."""
    return float(value) if math.isfinite(value) else WORST_SCORE[higher_is_better]


def pearson_per_column(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r of each column over rows; NaN where the truth (:func:`constant_columns`) or the prediction is constant."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} != truth shape {truth.shape}")
    if pred.ndim == 1:
        pred, truth = pred[:, None], truth[:, None]
    if pred.ndim != 2 or pred.shape[0] < 2:
        raise ValueError(f"need (rows >= 2, columns) arrays, got {pred.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(truth).all()):
        raise ValueError("pred/truth contain NaN or inf")
    pc = pred - pred.mean(0)
    tc = truth - truth.mean(0)
    sp = np.sqrt((pc**2).sum(0))
    st = np.sqrt((tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / (sp * st)
    constant = constant_columns(truth) | (sp == 0)
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def regression_report(pred: np.ndarray, truth: np.ndarray, names: list[str] | None = None) -> dict[str, Any]:
    """PCC@F (25th pct), PCC@S (median), PCC@M (mean) over outputs with a defined PCC, MSE, MAE.

    Outputs whose truth is constant get no PCC; their count is ``n_constant`` and their names
    ``constant_outputs``. A report with no defined PCC has NaN PCC fields.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    r = pearson_per_column(pred, truth)
    ok = np.isfinite(r)
    names = list(names) if names is not None else [str(i) for i in range(r.size)]
    if len(names) != r.size:
        raise ValueError(f"{len(names)} names for {r.size} outputs")
    defined = r[ok]
    return {
        "pcc_f": float(np.percentile(defined, 25)) if defined.size else float("nan"),
        "pcc_s": float(np.median(defined)) if defined.size else float("nan"),
        "pcc_m": float(defined.mean()) if defined.size else float("nan"),
        "mse": float(np.mean((pred - truth) ** 2)),
        "mae": float(np.mean(np.abs(pred - truth))),
        "n_outputs": int(r.size),
        "n_constant": int((~ok).sum()),
        "constant_outputs": [n for n, good in zip(names, ok) if not good],
        "n_samples": int(pred.shape[0]),
        "per_output": {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, r)},
    }
