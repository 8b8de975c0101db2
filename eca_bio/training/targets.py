"""Expression targets built from training slides only (DESIGN §3).

Targets follow the EGN protocol: the ``n_genes`` genes with the largest mean raw count over the training
slides, a log transform, and per-gene min–max scaling with training statistics. Two transforms are offered
and named in every report:

* ``egn``: log10(x + 1) of raw counts (the EGN / ECA paper protocol, comparable to published numbers);
* ``libsize``: counts per 10k per spot, then log1p (removes sequencing depth from the target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from eca_bio.configs import TRANSFORMS
from eca_bio.features.feature_set import DataError, SlideData

Transform = Literal["egn", "libsize"]


def transform_counts(counts: np.ndarray, transform: str, library_size: np.ndarray | None = None) -> np.ndarray:
    """``egn``: log10(x+1); ``libsize``: log1p(1e4·x / library size), the size summed over *all* genes."""
    if transform == "egn":
        return np.log10(counts + 1.0)
    if transform == "libsize":
        lib = counts.sum(1) if library_size is None else library_size
        return np.log1p(counts * (1e4 / np.maximum(lib, 1.0))[:, None])
    raise ValueError(f"unknown target transform {transform!r}; choose from {TRANSFORMS}")


def gene_columns(adata: ad.AnnData, genes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Raw counts (N, len(genes)) float64 of ``genes`` (absent genes are zeros) and the absent genes.

    Only the selected columns are densified; the counts stay sparse otherwise, so a slide with 100k+
    spots and ~18k genes costs N × len(genes) floats, not N × n_vars.
    """
    index = {g: i for i, g in enumerate(adata.var_names)}
    present = [j for j, g in enumerate(genes) if g in index]
    missing = [g for g in genes if g not in index]
    out = np.zeros((adata.n_obs, len(genes)), dtype=np.float64)
    if present:
        cols = adata.X[:, [index[genes[j]] for j in present]]
        out[:, present] = cols.toarray() if sp.issparse(cols) else np.asarray(cols, dtype=np.float64)
    return out, missing


def library_size(adata: ad.AnnData) -> np.ndarray:
    """Total raw count of each spot over *all* genes (N,) float64, without densifying sparse counts."""
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


@dataclass
class TargetSpec:
    """Gene list and per-gene min–max of the transformed training expression."""

    transform: str
    genes: list[str]
    minimum: np.ndarray
    maximum: np.ndarray
    train_slides: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.transform, "genes": list(self.genes), "minimum": self.minimum.tolist(),
                "maximum": self.maximum.tolist(), "train_slides": list(self.train_slides)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TargetSpec":
        return cls(d["transform"], list(d["genes"]), np.asarray(d["minimum"], dtype=np.float64),
                   np.asarray(d["maximum"], dtype=np.float64), list(d["train_slides"]))


def _aligned(slide: SlideData, genes: list[str], transform: str) -> tuple[np.ndarray, list[str]]:
    """Transformed expression of ``genes`` on one slide (absent genes are zeros) and the absent genes."""
    if slide.counts is None:
        raise DataError(f"slide {slide.slide_id}: no expression (it has no .h5ad)")
    counts, missing = gene_columns(slide.counts, genes)
    lib = library_size(slide.counts) if transform == "libsize" else None
    values = transform_counts(counts, transform, lib)
    if missing:
        values[:, [genes.index(g) for g in missing]] = 0.0
    return values, missing


def select_genes(train: list[SlideData], n_genes: int = 250) -> list[str]:
    """The ``n_genes`` genes with the largest mean raw count over all spots of the training slides."""
    if not train:
        raise DataError("gene selection needs at least one training slide")
    totals: dict[str, float] = {}
    for s in train:
        if s.counts is None:
            raise DataError(f"slide {s.slide_id}: no expression for gene selection")
        sums = np.asarray(s.counts.X.sum(axis=0), dtype=np.float64).ravel()  # column sums, sparse or dense
        for g, v in zip(s.counts.var_names, sums):
            totals[g] = totals.get(g, 0.0) + float(v)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [g for g, _ in ranked[:n_genes]]


def fit_targets(train: list[SlideData], transform: str, n_genes: int = 250) -> TargetSpec:
    """Select genes and fit per-gene min–max on the training slides only."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown target transform {transform!r}; choose from {TRANSFORMS}")
    genes = select_genes(train, n_genes)
    stacked = np.concatenate([_aligned(s, genes, transform)[0] for s in train])
    return TargetSpec(transform, genes, stacked.min(0), stacked.max(0), [s.slide_id for s in train])


def make_targets(slide: SlideData, spec: TargetSpec) -> tuple[np.ndarray, list[str]]:
    """Min–max scaled targets (N, G) float32 of a slide under ``spec`` and the genes absent on it (set to 0)."""
    values, missing = _aligned(slide, spec.genes, spec.transform)
    span = spec.maximum - spec.minimum
    span = np.where(span > 0, span, 1.0)
    scaled = (values - spec.minimum) / span
    if missing:
        scaled[:, [spec.genes.index(g) for g in missing]] = 0.0
    return scaled.astype(np.float32), missing
