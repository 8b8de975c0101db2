"""MOSI/MOSEI/CH-SIMS regression metrics, computed exactly as MMSA's ``metricsTop`` (DESIGN §3).

MMSA scores float32 model outputs; so does this module: predictions and labels are cast to float32
and every threshold, clip, rounding and the MAE are evaluated in float32, so values that sit exactly
on a bin edge (a label of float32(0.1) on SIMS's (-0.1, 0.1] bin) fall where MMSA puts them. Corr is
``np.corrcoef`` (float64 inside, as in MMSA). Values are returned unrounded (MMSA rounds to 4
decimals for display); the keys are MMSA's. Rounding to classes uses ``np.round`` (half to even).
"""

from __future__ import annotations

import numpy as np

MOSI_KEYS = ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr")
SIMS_KEYS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
# Which direction is better, for model selection and reports. "Loss" is MMSA's validation loss
# (:func:`mmsa_loss`), the quantity MMSA's ALMT trainer selects on (KeyEval "Loss").
HIGHER_IS_BETTER = {k: k != "MAE" for k in MOSI_KEYS + SIMS_KEYS} | {"Loss": False}


def _flat(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float32).reshape(-1)
    truth = np.asarray(truth, dtype=np.float32).reshape(-1)
    if pred.shape != truth.shape:
        raise ValueError(f"pred has {pred.size} values, truth has {truth.size}")
    if pred.size < 2:
        raise ValueError(f"need at least 2 samples, got {pred.size}")
    if not (np.isfinite(pred).all() and np.isfinite(truth).all()):
        raise ValueError("pred/truth contain NaN or inf")
    return pred, truth


def multiclass_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of samples whose rounded prediction equals the rounded truth (MMSA ``__multiclass_acc``)."""
    return float(np.sum(np.round(pred) == np.round(truth)) / float(len(truth)))


def _corr(pred: np.ndarray, truth: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(pred, truth)[0][1])


def _mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.absolute(pred - truth)).astype(np.float64))  # the mean is taken in float32, as in MMSA


def mmsa_loss(pred: np.ndarray, truth: np.ndarray, batch_size: int) -> float:
    """MMSA's validation "Loss": the mean over batches (in loader order) of each batch's MSE, rounded to 4 decimals."""
    pred, truth = _flat(pred, truth)
    starts = range(0, len(pred), batch_size)
    losses = [float(np.mean((pred[i:i + batch_size] - truth[i:i + batch_size]) ** 2)) for i in starts]
    return round(sum(losses) / len(losses), 4)


def mosi_regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA ``__eval_mosi_regression``: Has0/Non0 Acc-2 and weighted F1, Acc-5, Acc-7, MAE, Corr.

    Has0: truth >= 0 vs pred >= 0 over all samples. Non0: samples with truth == 0 dropped, then
    truth > 0 vs pred > 0. Acc-5/Acc-7: both clipped to ±2 / ±3 and rounded. Corr: ``np.corrcoef``
    (NaN when predictions are constant).
    """
    from sklearn.metrics import accuracy_score, f1_score

    pred, truth = _flat(pred, truth)
    non0 = truth != 0
    if not non0.any():
        raise ValueError("every truth value is 0: Non0 metrics are undefined")
    has0_truth, has0_pred = truth >= 0, pred >= 0
    non0_truth, non0_pred = truth[non0] > 0, pred[non0] > 0
    return {
        "Has0_acc_2": float(accuracy_score(has0_pred, has0_truth)),
        "Has0_F1_score": float(f1_score(has0_truth, has0_pred, average="weighted")),
        "Non0_acc_2": float(accuracy_score(non0_pred, non0_truth)),
        "Non0_F1_score": float(f1_score(non0_truth, non0_pred, average="weighted")),
        "Mult_acc_5": multiclass_acc(np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0)),
        "Mult_acc_7": multiclass_acc(np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0)),
        "MAE": _mae(pred, truth),
        "Corr": _corr(pred, truth),
    }


def _bins(x: np.ndarray, edges: list[float]) -> np.ndarray:
    """MMSA's binning: values in (edges[i], edges[i+1]] become i (compared in x's dtype, float32)."""
    out = x.copy()
    for i in range(len(edges) - 1):
        out[(x > edges[i]) & (x <= edges[i + 1])] = i
    return out


def sims_regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA ``__eval_sims_regression`` (labels in [-1, 1]): 2/3/5-class accuracy by fixed bins, weighted F1, MAE, Corr."""
    from sklearn.metrics import f1_score

    pred, truth = _flat(pred, truth)
    pred, truth = np.clip(pred, -1.0, 1.0), np.clip(truth, -1.0, 1.0)
    e2, e3, e5 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = _bins(pred, e2), _bins(truth, e2)
    return {
        "Mult_acc_2": multiclass_acc(p2, t2),
        "Mult_acc_3": multiclass_acc(_bins(pred, e3), _bins(truth, e3)),
        "Mult_acc_5": multiclass_acc(_bins(pred, e5), _bins(truth, e5)),
        "F1_score": float(f1_score(t2, p2, average="weighted")),
        "MAE": _mae(pred, truth),
        "Corr": _corr(pred, truth),
    }


def regression_metrics(pred: np.ndarray, truth: np.ndarray, dataset: str = "mosi") -> dict[str, float]:
    """Dispatch by data set name as MMSA does: mosi/mosei → MOSI rules, sims → CH-SIMS rules."""
    name = dataset.lower()
    if name in ("mosi", "mosei"):
        return mosi_regression_metrics(pred, truth)
    if name in ("sims", "ch-sims", "simsv2"):
        return sims_regression_metrics(pred, truth)
    raise ValueError(f"unknown data set {dataset!r}: expected mosi, mosei or sims")
