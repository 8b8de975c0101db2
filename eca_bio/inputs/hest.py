"""HEST-1k folders (``st/<id>.h5ad``, ``wsis/<id>.tif``, ``metadata/<id>.json``) -> AnnData."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from eca_core.io import read_json, require_self_contained_h5
from eca_bio.inputs.st_common import VISIUM_SPOT_DIAMETER_UM, STError, finish_section, positive


def read_hest(hest_dir: str | os.PathLike, sample_id: str, image: str | os.PathLike | None = None) -> ad.AnnData:
    """One HEST-1k sample as HEST's own reader finds it: ``st/<id>.h5ad``, ``wsis/<id>.tif``, ``metadata/<id>.json``.

    Counts are the h5ad's ``X`` (raw); spot centres its ``obsm['spatial']`` (else ``pxl_col_in_fullres`` /
    ``pxl_row_in_fullres``), in full-resolution pixels of the WSI; spots with ``in_tissue == 0`` are
    excluded. Microns per pixel: the metadata's ``pixel_size_um_estimated`` (HEST's own estimate; the
    WSI's embedded value is often absent or wrong), else ``pixel_size_um_embedded``; the spot diameter
    (``spot_diameter``, µm) sets ``spot_diameter_fullres``.
    """
    hest_dir = Path(hest_dir)
    h5ad_path = hest_dir / "st" / f"{sample_id}.h5ad"
    meta_path = hest_dir / "metadata" / f"{sample_id}.json"
    image_path = Path(image) if image is not None else hest_dir / "wsis" / f"{sample_id}.tif"
    for path, what in ((h5ad_path, "expression"), (image_path, "whole-slide image"), (meta_path, "metadata")):
        if not path.is_file():
            raise STError(f"HEST sample {sample_id}: no {what} file {path} (HEST-1k keeps st/<id>.h5ad, wsis/<id>.tif "
                          f"and metadata/<id>.json together)")
    meta = read_json(meta_path, STError)
    mpp_key = next((k for k in ("pixel_size_um_estimated", "pixel_size_um_embedded") if positive(meta.get(k))), None)
    if mpp_key is None:
        raise STError(f"{meta_path}: no positive pixel_size_um_estimated or pixel_size_um_embedded (microns per pixel)")
    mpp = float(meta[mpp_key])
    try:
        require_self_contained_h5(h5ad_path, STError)
        adata = ad.read_h5ad(h5ad_path)
    except (OSError, KeyError, ValueError) as exc:
        raise STError(f"{h5ad_path}: not a readable .h5ad file: {' '.join(str(exc).split())[:200]}") from exc
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    else:
        raise STError(f"{h5ad_path}: no spot positions (obsm['spatial'] or obs pxl_col_in_fullres/pxl_row_in_fullres)")
    adata = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs.copy(), var=adata.var.copy())
    adata.obsm["spatial"] = xy
    not_in_tissue: list[str] = []
    if "in_tissue" in adata.obs.columns:
        keep = adata.obs["in_tissue"].astype(int).to_numpy() == 1
        not_in_tissue = list(adata.obs_names[~keep].astype(str))
        adata = adata[keep].copy()
    spot_um = float(meta["spot_diameter"]) if positive(meta.get("spot_diameter")) else VISIUM_SPOT_DIAMETER_UM
    finish_section(adata, sample_id, image_path, mpp, f"HEST metadata {mpp_key} ({meta_path})",
            {"not_in_tissue": not_in_tissue}, {"spot_diameter_fullres": spot_um / mpp},
            {"counts": str(h5ad_path.resolve()), "positions": str(h5ad_path.resolve()), "metadata": str(meta_path.resolve())})
    adata.uns["st"]["technology"] = str(meta.get("st_technology", ""))
    if meta.get("patient"):  # HEST-1k's donor id: folds and exemplars by patient (eca_bio.training.folds)
        adata.uns["st"]["patient"] = str(meta["patient"])
    return adata
