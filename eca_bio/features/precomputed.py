"""Feature files other tools wrote (TRIDENT, CLAM) as preprocess inputs: find a slide's file, join its rows
to the ST spots, and name the one encoder that made them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eca_core.errors import InputError
from eca_bio.features.slide_h5 import FeatureFileError, read_slide_h5
from eca_bio.inputs.slides import slide_id_from_path


def find_features_file(features_dir: str | Path, slide_id: str, image: str | Path) -> Path:
    """The feature file of a slide, as TRIDENT and CLAM name it: ``<section id>.h5``, ``<image stem>.h5``
    (TRIDENT names files by the slide image), or the one file whose ``name`` attribute is either."""
    folder = Path(features_dir)
    names = list(dict.fromkeys([slide_id, slide_id_from_path(image)]))
    for name in names:
        if (folder / f"{name}.h5").is_file():
            return folder / f"{name}.h5"
    named = [f for f in sorted(folder.glob("*.h5")) if _file_name_attr(f) in names]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise InputError(f"{folder}: {len(named)} feature files name slide {slide_id}: {[f.name for f in named]}")
    raise InputError(f"{folder}: no feature file for slide {slide_id} (looked for {', '.join(f'{n}.h5' for n in names)} "
                     f"and a file whose 'name' attribute is one of them)")


def _file_name_attr(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for obj in (f.get("features"), f.get("coords"), f):
                if obj is not None and "name" in obj.attrs:
                    value = obj.attrs["name"]
                    return value.decode() if isinstance(value, bytes) else str(value)
    except OSError:
        return ""
    return ""


def check_same_image(h5: Any, dimensions: tuple[int, int]) -> None:
    size = (h5.coords_attrs.get("level0_width"), h5.coords_attrs.get("level0_height"))
    if None not in size and tuple(int(v) for v in size) != tuple(int(v) for v in dimensions):
        raise InputError(f"{h5.path}: made from a {size[0]}x{size[1]} image, but the slide is "
                         f"{dimensions[0]}x{dimensions[1]} (another image or another level 0?)")


def join_features_to_spots(path: Path, adata: Any, dimensions: tuple[int, int], max_unmatched_fraction: float = 0.1,
                           patch_size: float | None = None) -> tuple[np.ndarray, int, np.ndarray, str]:
    """Rows of a TRIDENT/CLAM feature file matched to the ST spots: (coords, level-0 patch size, features,
    the encoder the file names).

    By barcode when the file has ``barcodes``; otherwise each spot takes the row whose patch centre is
    nearest to the spot centre, within a quarter patch (spot-centred coordinates); and when most spots
    find none, the file is a tissue grid (TRIDENT's standard output, CLAM's patches): each spot takes
    the tile that contains its centre; ``uns['st']['feature_join']`` records the rule and the mean and
    largest spot-to-tile-centre distance. ``patch_size`` (level-0 px) is for files that do not say
    theirs (CLAM's ``save_hdf5`` writes none). Unmatched spots are
    dropped from ``adata`` and listed in ``uns['st']['excluded']['no_features']``; more than
    ``max_unmatched_fraction`` of them means the file does not cover the spots (an InputError).
    """
    from scipy.spatial import cKDTree

    h5 = read_slide_h5(path, with_tokens=False)
    check_same_image(h5, dimensions)
    size = float(h5.patch_size_level0) if patch_size is None or h5.has_patch_size else float(patch_size)
    spots = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    offset = None
    if h5.barcodes is not None:
        row_of = {b: i for i, b in enumerate(h5.barcodes)}
        rows = np.array([row_of.get(b, -1) for b in adata.obs_names])
        how = "barcode"
    else:
        centres = h5.coords.astype(np.float64) + size / 2.0
        dist, nearest = cKDTree(centres).query(spots) if len(centres) else \
            (np.full(adata.n_obs, np.inf), np.zeros(adata.n_obs, dtype=int))
        rows = np.where(dist <= size / 4.0, nearest, -1)
        how = "patch centre within a quarter patch of the spot centre"
        if (rows < 0).sum() > max_unmatched_fraction * adata.n_obs:  # a tissue grid (TRIDENT's standard output)
            inside = (np.abs(spots - centres[nearest]) <= size / 2.0).all(1) if len(centres) else np.zeros(len(spots), bool)
            rows = np.where(inside, nearest, -1)
            how = "the grid tile containing the spot centre"
        offset = dist[rows >= 0]
    unmatched = rows < 0
    if unmatched.sum() > max_unmatched_fraction * adata.n_obs:
        raise InputError(f"{path}: its {len(h5.coords)} rows do not cover the spots: {int(unmatched.sum())} of {adata.n_obs} "
                         f"spots have no row (matched by {how}), e.g. {list(adata.obs_names[unmatched][:3])}")
    adata.uns["st"]["excluded"]["no_features"] = [str(b) for b in adata.obs_names[unmatched]]
    adata.uns["st"]["feature_join"] = {"how": how, "patch_size_level0": size} | (
        {"mean_offset_px": float(offset.mean()), "max_offset_px": float(offset.max())} if offset is not None and offset.size else {})
    if unmatched.any():
        adata._inplace_subset_obs(~unmatched)
        rows = rows[~unmatched]
    return h5.coords[rows], int(round(size)), h5.features[rows], h5.encoder


def precomputed_encoder(features_dir: str | Path, features_encoder: str | None, plans: Sequence[Any]) -> dict[str, Any]:
    """The identity of features_dir's encoder: ``features_encoder``, else the one name all files give; the plans'
    feature files (``features_file``, ``features``, ``features_encoder``) must have one size and one encoder."""
    with_files = [p for p in plans if p.features_file]
    dims = {p.features_file.name: int(p.features.shape[1]) for p in with_files if p.features is not None}
    if len(set(dims.values())) > 1:
        raise FeatureFileError(f"{features_dir}: the feature files have different feature sizes {dims}; "
                              f"features of one encoder have one size")
    if features_encoder:
        named = {p.features_file.name: p.features_encoder for p in with_files if p.features_encoder}
        other = {f: n for f, n in named.items() if n != features_encoder}
        if other:
            raise FeatureFileError(f"{features_dir}: features_encoder is {features_encoder!r} but "
                                  f"{', '.join(f'{f} names {n!r}' for f, n in sorted(other.items()))}; "
                                  f"features of two encoders cannot be mixed")
        name = features_encoder
    else:
        names = {p.features_encoder for p in with_files}
        if len(names) != 1 or "" in names:
            raise FeatureFileError(f"{features_dir}: the feature files name encoder(s) {sorted(names)}; "
                                  f"set features_encoder to the one encoder that made them")
        name = names.pop()
    return {"name": name, "source": "precomputed features (TRIDENT/CLAM h5)"}
