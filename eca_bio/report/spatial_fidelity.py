"""Spatial fidelity of predicted expression: Moran's I of predictions vs the measured truth on the same spot graph.

A model can score a fair PCC while painting every gene as a smooth blob; Moran's I (scanpy's
``scanpy.metrics.morans_i``) on the spots' k-nearest-neighbour graph measures how spatially
autocorrelated each gene's map is, and the ratio I(predicted) / I(measured) shows whether the
prediction is smoother (> 1) or as patchy as the tissue (≈ 1).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

NEIGHBOURS = 6  # hexagonal Visium / square ST grids: the ring of nearest spots


def spot_graph(centres: np.ndarray, k: int = NEIGHBOURS) -> sp.csr_matrix:
    """Symmetric binary k-nearest-neighbour adjacency (N, N) of spot centres (as squidpy's spatial_neighbors)."""
    from scipy.spatial import cKDTree

    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("Moran's I needs at least 2 spots")
    _, idx = cKDTree(centres).query(centres, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    cols = idx[:, 1:].ravel()
    g = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return ((g + g.T) > 0).astype(np.float64).tocsr()


def morans_i(values: np.ndarray, centres: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Moran's I per column of ``values`` (N, G) on the spots' kNN graph (NaN for constant columns):
    I = N / W · zᵀAz / zᵀz with z the centred column, scanpy's ``metrics.morans_i`` in sparse matrix products
    (no numba compile, no scanpy import: evaluate calls it for every drawn map)."""
    values = np.asarray(values, dtype=np.float64)
    graph = spot_graph(centres, k)
    z = values - values.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = len(values) / graph.sum() * (z * (graph @ z)).sum(0) / (z * z).sum(0)
    out[np.ptp(values, axis=0) <= 0] = np.nan
    return np.asarray(out, dtype=np.float64)


def fidelity(pred: np.ndarray, truth: np.ndarray, centres: np.ndarray, slide_ids: np.ndarray, genes: list[str]) -> dict[str, Any]:
    """Per gene (averaged over the slides, each on its own graph): I of prediction and truth, their ratio; medians."""
    slide_ids = np.asarray(slide_ids)
    per_slide_pred, per_slide_truth = [], []
    for sid in dict.fromkeys(slide_ids.tolist()):
        rows = slide_ids == sid
        if rows.sum() < 3:
            continue
        per_slide_pred.append(morans_i(pred[rows], centres[rows]))
        per_slide_truth.append(morans_i(truth[rows], centres[rows]))
    if not per_slide_pred:
        nan = np.full(len(genes), np.nan)
        i_pred, i_truth = nan, nan
    else:
        with warnings.catch_warnings():  # "Mean of empty slice": genes constant on every slide stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            i_pred, i_truth = np.nanmean(per_slide_pred, axis=0), np.nanmean(per_slide_truth, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(i_truth > 0, i_pred / i_truth, np.nan)

    def med(x: np.ndarray) -> float:
        return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")

    return {"moran_pred": med(i_pred), "moran_truth": med(i_truth), "moran_ratio": med(ratio),
            "per_gene": {g: {"pred": _num(p), "truth": _num(t), "ratio": _num(r)} for g, p, t, r in zip(genes, i_pred, i_truth, ratio)}}


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
