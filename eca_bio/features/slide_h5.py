"""The per-slide feature file (``slides/<id>.h5``): the one module that writes and reads it.

Layout (TRIDENT's and CLAM's, plus what spatial transcriptomics needs)::

    coords    (N, 2) int64   level-0 top-left pixel of each patch; attrs as TRIDENT writes them:
                             patch_size (px at target magnification), patch_size_level0, level0_magnification,
                             target_magnification, overlap, level0_width, level0_height, name, savetodir;
                             no patch_level: CLAM's patch reader (Whole_Slide_Bag_FP) reads a patch_size box at
                             patch_level, which here would be the target size, not our level-0 box, so it stops
                             with KeyError('patch_level') instead of reading the wrong pixels
    features  (N, D) float32 one embedding per patch (TRIDENT's slide encoders and CLAM models read it as is);
                             attrs name, encoder
    tokens    (N, T, D) float16, optional: the encoder's patch tokens (pooled to a k x k grid or all)
    barcodes  (N,) UTF-8, ST slides: the spot of each row
    file attrs               mpp, patch_size_px, encoder, encoder_config (JSON), slide_id, params_hash, ...

Magnifications follow the usual 10 / (microns per pixel) convention (0.25 um/px = 40x). TRIDENT files
(``features_<encoder>/<slide>.h5``: coords + features, no file attrs) and CLAM files are read too; see
:func:`read_slide_h5`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from eca_core.errors import InputError
from eca_core.io import open_own_h5

FEATURES_DTYPE = np.float32
TOKENS_DTYPE = np.float16


class FeatureFileError(InputError):
    """A per-slide feature file is missing, unreadable or inconsistent; the message names it."""


def magnification(mpp: float) -> float:
    """Objective magnification equivalent of ``mpp`` microns per pixel (10 / mpp: 0.25 → 40x, 0.5 → 20x)."""
    return round(10.0 / float(mpp), 3)


def coords_attrs(name: str, patch_px: int, patch_size_level0: int, mpp: float, level0_width: int, level0_height: int,
                 overlap_px: int = 0, savetodir: str = "") -> dict[str, Any]:
    """TRIDENT's coords attributes for patches of ``patch_size_level0`` level-0 px resized to ``patch_px``."""
    level0_mag = magnification(mpp)
    return {
        "patch_size": int(patch_px),  # TRIDENT: at target magnification
        "patch_size_level0": int(patch_size_level0),
        "level0_magnification": level0_mag,
        "target_magnification": round(level0_mag * patch_px / patch_size_level0, 3),
        "overlap": int(overlap_px),
        "name": str(name),
        "savetodir": str(savetodir),
        "level0_width": int(level0_width),
        "level0_height": int(level0_height),
    }


def create_slide_file(f: h5py.File, coords: np.ndarray, coord_attrs: dict[str, Any], feature_dim: int, num_tokens: int,
                      barcodes: list[str] | None = None, encoder: str = "") -> None:
    """Datasets of a new slide file (rows filled later): coords with its attributes, features, tokens, barcodes."""
    ds = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
    for key, value in coord_attrs.items():
        ds.attrs[key] = value
    create_arrays(f, len(ds), feature_dim, num_tokens)
    f["features"].attrs["name"] = str(coord_attrs.get("name", ""))
    f["features"].attrs["encoder"] = str(encoder)
    if barcodes is not None:
        f.create_dataset("barcodes", data=np.array([str(b) for b in barcodes], dtype=object), dtype=h5py.string_dtype("utf-8"))


def create_arrays(f: h5py.File, n: int, d: int, t: int) -> None:
    """``features`` (n, d) float32 and, if ``t``, ``tokens`` (n, t, d) float16, chunked by rows."""
    f.create_dataset("features", shape=(n, d), dtype=FEATURES_DTYPE, chunks=(min(n, 256), d) if n else None)
    if t:
        f.create_dataset("tokens", shape=(n, t, d), dtype=TOKENS_DTYPE, chunks=(min(n, 16), t, d) if n else None)


def write_file_attrs(f: h5py.File, attrs: dict[str, Any], feature_dim: int) -> None:
    """The file-level attributes (dicts and lists as JSON); written last, so a file with them is complete."""
    for key, value in attrs.items():
        f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
    f.attrs["feature_dim"] = int(feature_dim)


def is_complete(path: Path, params_hash: str) -> bool:
    """The file exists, opens, holds features and was written for ``params_hash``."""
    if not Path(path).exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("params_hash") == params_hash and "features" in f
    except OSError:
        return False


@dataclass
class SlideH5:
    """What a feature file holds, with every array in memory."""

    path: Path
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    features: np.ndarray  # (N, D) float32
    tokens: np.ndarray | None  # (N, T, D) float32
    barcodes: list[str] | None
    attrs: dict[str, Any] = field(default_factory=dict)  # file attributes (JSON strings decoded)
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    features_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size_level0(self) -> float:
        """Level-0 patch side: ours (``patch_size_px``), TRIDENT's ``patch_size_level0`` or CLAM's level-0 ``patch_size``."""
        for source, key in ((self.attrs, "patch_size_px"), (self.coords_attrs, "patch_size_level0")):
            if key in source:
                return float(source[key])
        if int(self.coords_attrs.get("patch_level", -1)) == 0 and "patch_size" in self.coords_attrs:
            return float(self.coords_attrs["patch_size"]) * float(self.coords_attrs.get("custom_downsample", 1))
        raise FeatureFileError(f"{self.path}: no patch size (neither TRIDENT's coords attribute 'patch_size_level0' nor "
                               f"CLAM's 'patch_size' at patch_level 0); give features_patch_size (level-0 px)")

    @property
    def has_patch_size(self) -> bool:
        """Whether the file records its level-0 patch side (CLAM's ``save_hdf5`` output does not)."""
        try:
            self.patch_size_level0
        except FeatureFileError:
            return False
        return True

    @property
    def encoder(self) -> str:
        """The encoder named in the file (ours: ``encoder``; TRIDENT: features attribute ``encoder``), or ''."""
        return str(self.attrs.get("encoder") or self.features_attrs.get("encoder") or "")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_slide_h5(path: str | Path, with_tokens: bool = True) -> SlideH5:
    """Read a feature file written by this project, TRIDENT or CLAM; FeatureFileError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such feature file")
    with open_own_h5(path, FeatureFileError) as f:
        for key in ("coords", "features"):
            if key not in f:
                raise FeatureFileError(f"{path}: no '{key}' dataset (present: {sorted(f)})")
        features = np.asarray(f["features"][()], dtype=np.float32)
        coords = np.asarray(f["coords"][()])
        tokens = np.asarray(f["tokens"][()], dtype=np.float32) if with_tokens and "tokens" in f else None
        barcodes = [b.decode() if isinstance(b, bytes) else str(b) for b in f["barcodes"][()]] if "barcodes" in f else None
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        c_attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
        f_attrs = {k: _plain(v) for k, v in f["features"].attrs.items()}
    if features.ndim == 3 and features.shape[0] == 1:  # CLAM .pt-style batch dimension
        features = features[0]
    if features.ndim != 2 or coords.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise FeatureFileError(f"{path}: features {features.shape} / coords {coords.shape} are not (N, D) / (N, 2)")
    if tokens is not None and (tokens.ndim != 3 or tokens.shape[0] != features.shape[0]):
        raise FeatureFileError(f"{path}: tokens {tokens.shape} are not (N, T, D) with N = {features.shape[0]}")
    if barcodes is not None and len(barcodes) != features.shape[0]:
        raise FeatureFileError(f"{path}: {len(barcodes)} barcodes for {features.shape[0]} rows")
    bad = np.flatnonzero(~np.isfinite(features).all(1))
    if bad.size:
        raise FeatureFileError(f"{path}: features contain NaN/inf in {bad.size} row(s), e.g. rows {bad[:5].tolist()}")
    return SlideH5(path, coords.astype(np.int64), features, tokens, barcodes, attrs, c_attrs, f_attrs)
