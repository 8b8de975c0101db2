"""10x Space Ranger outputs: Visium folders (``filtered_feature_bc_matrix.h5`` + ``spatial/``) and Visium HD runs
(``binned_outputs/<bin>/``) -> AnnData, and the 10x feature-barcode HDF5 reader."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from eca_core.io import read_json, require_self_contained_h5
from eca_bio.inputs.st_common import (IMAGE_SUFFIXES, VISIUM_SPOT_DIAMETER_UM, STError, find_image, finish_section, image_candidates, positive)

VISIUM_HD_BIN = "square_016um"  # default bin of a Visium HD run (binned_outputs/square_002um | 008um | 016um)


def visium_count_file(folder: Path) -> str | None:
    """The count matrix of a Space Ranger folder: ``filtered_feature_bc_matrix.h5`` (or raw), also as 10x's downloads
    name it, prefixed with the dataset (``<name>_filtered_feature_bc_matrix.h5``, as EGN reads them)."""
    for kind in ("filtered", "raw"):
        for name in (f"{kind}_feature_bc_matrix.h5", f"{folder.name}_{kind}_feature_bc_matrix.h5"):
            if (folder / name).exists():
                return name
    return None


def read_visium(folder: str | os.PathLike, image: str | os.PathLike | None = None, library_id: str | None = None,
                count_file: str = "filtered_feature_bc_matrix.h5", hd: bool = False) -> ad.AnnData:
    """Space Ranger output folder -> AnnData, as ``scanpy.read_visium`` reads it, plus the full-res image path.
    ``hd``: a Visium HD bin folder (bins of ``bin_size_um``, never 55 um spots).

    Keeps in-tissue barcodes present in the count matrix; spots with zero counts are excluded and reported.
    """
    folder = Path(folder)
    library_id = library_id or folder.name
    h5 = folder / count_file
    if not h5.exists():
        raise STError(f"{folder}: no {count_file} (not a Space Ranger output folder)")
    adata = read_10x_h5(h5)
    spatial = folder / "spatial"
    pos_path = next((spatial / n for n in ("tissue_positions.csv", "tissue_positions_list.csv") if (spatial / n).exists()), None)
    if pos_path is None:
        parquet = spatial / "tissue_positions.parquet"
        if not parquet.exists():
            raise STError(f"{spatial}: no tissue_positions.csv / tissue_positions_list.csv / tissue_positions.parquet")
        pos_path = parquet
    pos = _read_positions(pos_path)
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.exists():
        raise STError(f"{spatial}: no scalefactors_json.json")
    scalefactors = read_json(sf_path, STError)
    if "spot_diameter_fullres" not in scalefactors:
        raise STError(f"{sf_path}: missing 'spot_diameter_fullres'")

    unknown = adata.obs_names.difference(pos.index)
    if len(unknown):
        raise STError(f"{h5} and {pos_path} do not match: {len(unknown)} of {adata.n_obs} barcodes have no position "
                      f"(e.g. {list(unknown[:5])})")
    pos = pos.loc[adata.obs_names]
    in_tissue = pos["in_tissue"].astype(int) == 1
    not_in_tissue = list(adata.obs_names[~in_tissue.to_numpy()])
    adata = adata[in_tissue.to_numpy()].copy()
    pos = pos.loc[adata.obs_names]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].astype(int).to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    fallback = None
    if image is None and not image_candidates(folder):
        image, fallback, scalefactors = _downscaled_image(spatial, scalefactors, sf_path)
        adata.obsm["spatial_fullres"] = adata.obsm["spatial"].copy()
        adata.obsm["spatial"] = adata.obsm["spatial"] * fallback["scale"]  # pixels of the image that is tiled
    image_path = Path(image) if image is not None else find_image(folder, None)
    if hd or "bin_size_um" in scalefactors:  # Visium HD: bins, not 55 um spots
        mpp, source = _visium_hd_mpp(scalefactors, sf_path, fallback)
        scalefactors = dict(scalefactors) | {"spot_diameter_fullres": float(scalefactors["bin_size_um"]) / mpp}
    else:
        mpp = VISIUM_SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"])
        source = f"spot diameter {VISIUM_SPOT_DIAMETER_UM:g} um / {float(scalefactors['spot_diameter_fullres']):.2f} px"
    finish_section(adata, library_id, image_path, mpp, source,
            {"not_in_tissue": not_in_tissue}, scalefactors,
            {"counts": str(h5.resolve()), "positions": str(pos_path.resolve())})
    if fallback is not None:
        adata.uns["st"]["image_fallback"] = (
            f"no full-resolution image in {folder}: tiling {fallback['name']} (its scale factor {fallback['scale']:.6g}) "
            f"at {mpp:.3f} um/px")
    images = {}
    for key, name in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        if (spatial / name).exists():
            from PIL import Image

            from eca_bio.inputs.slides import DEFAULT_MAX_MEGAPIXELS, check_decode_size

            with Image.open(spatial / name) as im:
                check_decode_size(spatial / name, im.size, DEFAULT_MAX_MEGAPIXELS)
                images[key] = np.asarray(im.convert("RGB"))
    adata.uns["spatial"][library_id]["images"] = images
    return adata


def _visium_hd_mpp(scalefactors: dict[str, Any], sf_path: Path, fallback: dict[str, Any] | None) -> tuple[float, str]:
    """Microns per pixel of a Visium HD bin folder: ``microns_per_pixel``, else ``bin_size_um`` over the bin's
    ``spot_diameter_fullres`` (its side in pixels); never the 55 um Visium spot."""
    bin_um = scalefactors.get("bin_size_um")
    if not positive(bin_um):
        raise STError(f"{sf_path}: a Visium HD bin folder without a positive 'bin_size_um'; the bins' size is unknown")
    if positive(scalefactors.get("microns_per_pixel")):
        mpp = float(scalefactors["microns_per_pixel"]) / (fallback["scale"] if fallback else 1.0)
        return mpp, f"Visium HD microns_per_pixel ({float(bin_um):g} um bins)"
    if not positive(scalefactors.get("spot_diameter_fullres")):
        raise STError(f"{sf_path}: a Visium HD bin folder without 'microns_per_pixel' or a positive 'spot_diameter_fullres'")
    side = float(scalefactors["spot_diameter_fullres"])
    return float(bin_um) / side, (f"Visium HD bin_size_um {float(bin_um):g} / spot_diameter_fullres {side:.2f} px "
                                  f"(no microns_per_pixel in {sf_path.name})")


def read_visium_hd(folder: str | os.PathLike, image: str | os.PathLike | None = None, library_id: str | None = None,
                   bin_name: str = VISIUM_HD_BIN) -> ad.AnnData:
    """A Visium HD Space Ranger output folder, one bin size: ``binned_outputs/<bin>/`` read as a Visium folder.

    The bin folder holds what a Visium folder does (``filtered_feature_bc_matrix.h5``,
    ``spatial/tissue_positions.parquet``, ``spatial/scalefactors_json.json`` with ``bin_size_um`` and
    ``microns_per_pixel``); the microscope image is the run folder's own (or given). Each bin is a spot
    whose side is the bin size. Read with scanpy (counts) and pandas/pyarrow (positions): the two files
    10x documents, into AnnData, without the dask/zarr stack a SpatialData reader brings.
    """
    folder = Path(folder)
    bins = sorted(p.name for p in (folder / "binned_outputs").iterdir() if p.is_dir())
    if bin_name not in bins:
        raise STError(f"{folder / 'binned_outputs'}: no bin folder {bin_name!r}; available: {bins}")
    if image is None:
        candidates = _hd_image_candidates(folder)
        if len(candidates) > 1:
            raise STError(f"{folder}: {len(candidates)} microscope images ({', '.join(c.name for c in candidates)}); "
                          f"name the one the run was aligned to with images: {{{folder.name}: PATH}}")
        if len(candidates) == 1:
            image = candidates[0]
    return read_visium(folder / "binned_outputs" / bin_name, image=image, library_id=library_id or folder.name, hd=True)


def read_10x_h5(path: str | os.PathLike, gex_only: bool = True) -> ad.AnnData:
    """10x Genomics HDF5 feature-barcode matrix -> AnnData (barcodes x features), read by ``scanpy.read_10x_h5``.

    Every feature field Space Ranger writes is kept in ``var``: ``gene_ids``, ``feature_types``, ``genome``
    and, for probe-based matrices, ``probe_ids``, ``gene_name``, ``probe_region``, ``filtered_probes``.
    Counts are float32 CSR; duplicate feature names are made unique as scanpy does.
    """
    import scanpy as sc

    path = Path(path)
    try:
        import h5py

        require_self_contained_h5(path, STError)
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise STError(f"{path}: no 'matrix' group (only the Cell Ranger >= 3 HDF5 layout is supported)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Variable names are not unique" (made unique below)
            adata = sc.read_10x_h5(path, gex_only=gex_only)
    except STError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise STError(f"{path}: not a readable 10x feature-barcode HDF5 file: {' '.join(str(exc).split())[:200]}") from exc
    adata.var_names_make_unique()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obs_names = adata.obs_names.astype(str)
    return adata


def _read_positions(path: Path) -> pd.DataFrame:
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    try:
        if path.suffix == ".parquet":
            pos = pd.read_parquet(path)
        else:
            first = path.read_text().split("\n", 1)[0]
            has_header = "barcode" in first or "in_tissue" in first
            pos = pd.read_csv(path, header=0 if has_header else None)
            if not has_header:
                if pos.shape[1] != 6:
                    raise STError(f"{path}: expected 6 columns {cols}, found {pos.shape[1]}")
                pos.columns = cols
    except STError:
        raise
    except Exception as exc:
        raise STError(f"{path}: cannot read tissue positions: {exc}") from exc
    missing = [c for c in cols if c not in pos.columns]
    if missing:
        raise STError(f"{path}: missing column(s) {missing}")
    return pos.set_index(pos["barcode"].astype(str))


def _downscaled_image(spatial: Path, scalefactors: dict, sf_path: Path) -> tuple[Path, dict[str, Any], dict]:
    """Without a full-resolution image: Space Ranger's hires (else lowres) PNG, with scale factors for its pixels.

    Coordinates and the spot diameter are multiplied by the image's scale factor, so the PNG plays the
    full-resolution image (its own hires scale factor becomes 1) and the microns per pixel follow.
    """
    for name, key in (("tissue_hires_image.png", "tissue_hires_scalef"), ("tissue_lowres_image.png", "tissue_lowres_scalef")):
        if (spatial / name).is_file():
            if not positive(scalefactors.get(key)):
                raise STError(f"{sf_path}: no positive '{key}' for {spatial / name}")
            scale = float(scalefactors[key])
            sf = dict(scalefactors)
            sf["spot_diameter_fullres"] = float(scalefactors["spot_diameter_fullres"]) * scale
            if "fiducial_diameter_fullres" in sf:
                sf["fiducial_diameter_fullres"] = float(sf["fiducial_diameter_fullres"]) * scale
            for other in ("tissue_hires_scalef", "tissue_lowres_scalef"):
                if other in sf:
                    sf[other] = float(sf[other]) / scale
            return spatial / name, {"name": f"spatial/{name}", "scale": scale}, sf
    raise STError(f"{spatial.parent}: no full-resolution image ({', '.join(IMAGE_SUFFIXES)}) and no "
                  f"spatial/tissue_hires_image.png or tissue_lowres_image.png; give the image path")


def _hd_image_candidates(folder: Path) -> list[Path]:
    """A Visium HD run's microscope image where 10x and spatialdata-io look: ``microscope_image/``, then
    ``<prefix>tissue_image.*`` and other images in the run folder."""
    sub = folder / "microscope_image"
    found = image_candidates(sub) if sub.is_dir() else []
    return found or image_candidates(folder)
