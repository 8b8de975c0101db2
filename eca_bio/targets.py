"""Load a preprocess run (per-slide HDF5 + AnnData) and build expression targets from training slides only.

Targets follow the EGN protocol (DESIGN §3): the ``n_genes`` genes with the largest mean raw count
over the training slides, a log transform, and per-gene min–max scaling with training statistics.
Two transforms are offered and named in every report:

* ``egn``: log10(x + 1) of raw counts (the EGN / ECA paper protocol, comparable to published numbers);
* ``libsize``: counts per 10k per spot, then log1p (removes sequencing depth from the target).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from eca_core.errors import InputError
from eca_core.io import inside, plain_name, read_json, require_self_contained_h5
from eca_bio.configs import TRANSFORMS
from eca_bio.slide_h5 import read_slide_h5

Transform = Literal["egn", "libsize"]


class DataError(InputError):
    """An input file is missing, inconsistent or malformed; the message names the file."""


@dataclass
class SlideData:
    """One preprocessed slide: patch embeddings and, for ST slides, raw counts in the same row order."""

    slide_id: str
    features: np.ndarray  # (N, D) float32, CLS / pooled embedding per spot or tile
    tokens: np.ndarray | None  # (N, T, D) float32 patch tokens
    coords: np.ndarray  # (N, 2) level-0 px, patch top-left corner
    centres: np.ndarray  # (N, 2) full-res px (x, y) of the spot / tile centre
    h5: Path
    image: str
    thumbnail: Path | None
    mpp: float
    patch_size_px: float
    counts: ad.AnnData | None = None  # raw counts, obs in the row order of the HDF5
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        return int(self.features.shape[0])


def canonical_encoder(cfg: Any) -> str:
    """A comparable string for an encoder config (dict or JSON string)."""
    if isinstance(cfg, (str, bytes)):
        cfg = json.loads(cfg)
    if isinstance(cfg, dict) and "pretrained" in cfg:  # an EncoderConfig: written before `backend` existed means timm
        cfg = {"backend": "timm", **cfg}
    return json.dumps(cfg, sort_keys=True, default=str)


def read_manifest(pre_dir: Path) -> dict[str, Any]:
    """The preprocess stage's ``manifest.json`` (clear error if absent or malformed)."""
    path = Path(pre_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: no preprocess manifest (run `eca-bio preprocess` first)")
    manifest = read_json(path, DataError)
    for key in ("encoder", "slides"):
        if key not in manifest:
            raise DataError(f"{path}: manifest has no '{key}'")
    seen = set()
    for i, entry in enumerate(manifest["slides"]):  # ids become output file names; files must stay in the folder
        where = f"{path}: slides[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object")
        sid = plain_name(entry.get("slide_id"), f"{where}.slide_id", DataError)
        if sid in seen:
            raise DataError(f"{where}.slide_id: {sid!r} listed twice")
        seen.add(sid)
        for key in ("h5", "h5ad", "thumbnail"):
            if entry.get(key) or key == "h5":
                inside(pre_dir, entry.get(key), f"{where}.{key}", DataError)
    return manifest


def _check_finite(arr: np.ndarray, what: str, path: Path) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1)).flatten()
        raise DataError(f"{path}: {what} contain NaN/inf in {bad.size} row(s), e.g. rows {bad[:5].tolist()}")


def load_slide(pre_dir: Path, entry: dict[str, Any], encoder: Any, with_tokens: bool = True) -> SlideData:
    """Read one manifest entry; check the embeddings exist, come from ``encoder`` and are finite."""
    pre_dir = Path(pre_dir)
    sid = entry["slide_id"]
    h5_path = pre_dir / entry["h5"]
    if not h5_path.is_file():
        raise DataError(f"slide {sid}: embeddings missing: {h5_path} does not exist (re-run preprocess)")
    h5 = read_slide_h5(h5_path, with_tokens)
    attrs = h5.attrs
    if "encoder_config" not in attrs:
        raise DataError(f"{h5_path}: no 'encoder_config' attribute; cannot tell which encoder made these embeddings")
    if canonical_encoder(attrs["encoder_config"]) != canonical_encoder(encoder):
        raise DataError(f"{h5_path}: embeddings come from another encoder ({canonical_encoder(attrs['encoder_config'])}) "
                        f"than expected ({canonical_encoder(encoder)})")
    features, coords, tokens, barcodes = h5.features, h5.coords, h5.tokens, h5.barcodes
    if tokens is not None:
        _check_finite(tokens, "tokens", h5_path)
    size = h5.patch_size_level0
    centres = coords.astype(np.float64) + size / 2.0
    counts = None
    if entry.get("h5ad"):
        counts, centres = _load_counts(pre_dir / entry["h5ad"], barcodes, h5_path, centres)
    thumb = pre_dir / entry["thumbnail"] if entry.get("thumbnail") else None
    return SlideData(sid, features, tokens, coords, centres, h5_path, str(entry.get("image", attrs.get("slide", ""))),
                     thumb, float(entry.get("mpp", attrs.get("mpp", 0.0))), size, counts, attrs)


def _load_counts(path: Path, barcodes: list[str] | None, h5_path: Path, centres: np.ndarray) -> tuple[ad.AnnData, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: expression file listed in the manifest does not exist")
    try:
        require_self_contained_h5(path, DataError)
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .h5ad file (truncated or corrupt?): {' '.join(str(exc).split())[:200]}") from exc
    if barcodes is None:
        if adata.n_obs != centres.shape[0]:
            raise DataError(f"{path}: {adata.n_obs} spots but {h5_path} has {centres.shape[0]} rows and no barcodes")
    else:
        if len(barcodes) != centres.shape[0]:
            raise DataError(f"{h5_path}: {len(barcodes)} barcodes for {centres.shape[0]} rows")
        missing = sorted(set(barcodes) - set(adata.obs_names))
        if missing:
            raise DataError(f"{path}: {len(missing)} spot(s) of {h5_path} are absent, e.g. {missing[:3]}")
        adata = adata[barcodes].copy()
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)  # the stored values only: no densifying
    if not np.isfinite(values).all() or (values < 0).any():
        raise DataError(f"{path}: counts must be finite and non-negative")
    if "spatial" in adata.obsm:
        centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return adata, centres


def load_preprocessed(pre_dir: Path, require_expression: bool = False, with_tokens: bool = True,
                      encoder: Any | None = None) -> tuple[dict[str, Any], list[SlideData]]:
    """All slides of a preprocess run; ``encoder`` (default: the manifest's) must match every slide."""
    manifest = read_manifest(pre_dir)
    encoder = manifest["encoder"] if encoder is None else encoder
    slides = []
    for entry in manifest["slides"]:
        if require_expression and not entry.get("h5ad"):
            continue
        slides.append(load_slide(pre_dir, entry, encoder, with_tokens))
    if not slides:
        raise DataError(f"{pre_dir}/manifest.json lists no {'ST ' if require_expression else ''}slides")
    dims = {s.features.shape[1] for s in slides}
    if len(dims) != 1:
        raise DataError(f"{pre_dir}: slides have different feature dimensions {sorted(dims)}")
    return manifest, slides


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
