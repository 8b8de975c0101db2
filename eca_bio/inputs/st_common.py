"""What every spatial-transcriptomics reader shares: the error type, image lookup, count and position checks,
excluding spots outside the image, and the scanpy/squidpy layout every reader returns (:func:`finish_section`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from eca_core.errors import InputError

VISIUM_SPOT_DIAMETER_UM = 55.0  # 10x Visium spot diameter; scalefactors give it in full-res pixels
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".jpg", ".jpeg", ".png")


class STError(InputError):
    """A spatial-transcriptomics folder or file is malformed or inconsistent."""


def positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def exclude_outside_image(adata: ad.AnnData, width: int, height: int, max_outside_fraction: float = 0.1) -> list[str]:
    """Drop spots whose centre lies outside a ``width`` x ``height`` image, recording them in ``uns['st']``.

    More than ``max_outside_fraction`` of the spots outside means the coordinates do not belong to this
    image (wrong image, or coordinates at another scale): an ``STError`` naming both files.
    """
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height) & np.isfinite(xy).all(axis=1)
    outside = list(adata.obs_names[~inside])
    st = adata.uns["st"]
    if len(outside) > max_outside_fraction * adata.n_obs:
        raise STError(
            f"{st.get('positions') or st.get('selection')}: {len(outside)} of {adata.n_obs} spot centres lie outside "
            f"the image {st['image']} ({width}x{height} px), e.g. {outside[:3]} at {xy[~inside][:3].round(1).tolist()}; "
            "wrong image, or coordinates not in full-resolution pixels?"
        )
    if outside:
        adata._inplace_subset_obs(inside)
    adata.uns["st"]["excluded"]["outside_image"] = outside
    return outside


def validate_counts(X, obs_names, var_names, path: str) -> None:
    """Counts must be finite and non-negative: name the file, the first bad spot and gene, and how many are bad."""
    coo = X.tocoo() if sp.issparse(X) else None
    values = coo.data if coo is not None else np.asarray(X).ravel()
    bad = ~np.isfinite(values) | (np.nan_to_num(values, nan=0.0) < 0)
    if not bad.any():
        return
    first = int(np.argmax(bad))
    r, c = (int(coo.row[first]), int(coo.col[first])) if coo is not None else divmod(first, X.shape[1])
    value = values[first]
    kind = "NaN" if np.isnan(value) else "infinite" if np.isinf(value) else "negative"
    raise STError(f"{path}: {int(bad.sum())} count(s) are NaN, infinite or negative; first: spot {obs_names[r]!r}, "
                  f"gene {var_names[c]!r} = {value} ({kind})")


def validate_positions(xy: np.ndarray, obs_names, path: str) -> None:
    """Spot pixel coordinates must be finite numbers: name the file and the first bad spot."""
    bad = ~np.isfinite(np.asarray(xy, dtype=np.float64)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise STError(f"{path}: {int(bad.sum())} spot(s) have missing or non-numeric pixel coordinates; "
                      f"first: spot {obs_names[i]!r} = {np.asarray(xy)[i].tolist()}")


def finish_section(adata: ad.AnnData, library_id: str, image_path: Path, mpp: float, mpp_source: str,
            excluded: dict[str, list[str]], scalefactors: dict, files: dict[str, str]) -> None:
    adata.obs_names = adata.obs_names.astype(str)
    validate_counts(adata.X, adata.obs_names, adata.var_names, files["counts"])
    validate_positions(adata.obsm["spatial"], adata.obs_names, files.get("selection") or files.get("positions") or files["counts"])
    zero = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    excluded = {k: [str(v) for v in vals] for k, vals in excluded.items()}
    excluded["zero_counts"] = list(adata.obs_names[zero])
    if zero.any():
        adata._inplace_subset_obs(~zero)
    if adata.n_obs == 0:
        raise STError(f"{files['counts']}: no spot with counts left (excluded: { {k: len(v) for k, v in excluded.items()} })")
    adata.uns["spatial"] = {library_id: {"images": {}, "scalefactors": dict(scalefactors),
                                         "metadata": {"source_image_path": str(image_path.resolve())}}}
    adata.uns["st"] = {"library_id": library_id, "image": str(image_path.resolve()), "array_mpp": float(mpp),
                       "array_mpp_source": mpp_source, "excluded": excluded, **files}


def image_candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_image(folder: Path, section_id: str | None) -> Path:
    images = image_candidates(folder)
    if section_id is not None and len(images) > 1:
        named = [p for p in images if section_id in p.stem]
        images = named or images
    if len(images) == 1:
        return images[0]
    if not images:
        raise STError(f"{folder}: no full-resolution image ({', '.join(IMAGE_SUFFIXES)}) found; give the image path")
    raise STError(f"{folder}: several candidate full-resolution images {[p.name for p in images]}; give the image path")


def read_table(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise STError(f"{path}: cannot read table: {exc}") from exc
