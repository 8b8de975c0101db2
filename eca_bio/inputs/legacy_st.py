"""The legacy ST layout (Ståhl et al. 2016; the HER2+ sections): ``<id>.tsv.gz`` counts, ``<id>_selection.tsv`` spots,
one H&E image per section -> AnnData."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from eca_bio.inputs.st_common import STError, find_image, finish_section, read_table, validate_positions

ST_SPOT_SPACING_UM = 200.0  # legacy ST array: spot centre-to-centre distance (Stahl et al. 2016)


def legacy_sections(folder: Path) -> list[str]:
    ids = []
    for sel in sorted(folder.glob("*_selection.tsv")):
        sid = sel.name[: -len("_selection.tsv")]
        if any((folder / f"{sid}{ext}").exists() for ext in (".tsv.gz", ".tsv")):
            ids.append(sid)
    return ids


def read_legacy_st(folder: str | os.PathLike, section_id: str | None = None, image: str | os.PathLike | None = None) -> ad.AnnData:
    """Legacy ST section: ``<id>.tsv.gz`` (spots x genes, rows ``XxY``), ``<id>_selection.tsv``, one H&E image.

    Kept: spots with ``selected == 1`` that have a counts row with a non-zero total. Selected spots without
    counts or with zero counts are listed in ``uns['st']['excluded']``; a counts row without a spot in the
    selection file is an error (the two files do not belong together).
    """
    folder = Path(folder)
    if section_id is None:
        pairs = legacy_sections(folder)
        if len(pairs) != 1:
            raise STError(f"{folder}: expected one <id>_selection.tsv + <id>.tsv.gz pair, found {pairs or 'none'}")
        section_id = pairs[0]
    counts_path = next((folder / f"{section_id}{e}" for e in (".tsv.gz", ".tsv") if (folder / f"{section_id}{e}").exists()), None)
    sel_path = folder / f"{section_id}_selection.tsv"
    if counts_path is None or not sel_path.exists():
        raise STError(f"{folder}: missing {section_id}.tsv.gz or {section_id}_selection.tsv")
    image_path = Path(image) if image is not None else find_image(folder, section_id)

    sel = read_table(sel_path, sep="\t")
    need = ["x", "y", "pixel_x", "pixel_y"]
    missing = [c for c in need if c not in sel.columns]
    if missing:
        raise STError(f"{sel_path}: missing column(s) {missing}; expected x y new_x new_y pixel_x pixel_y selected")
    for col in ("pixel_x", "pixel_y"):
        sel[col] = pd.to_numeric(sel[col], errors="coerce")
    bad_xy = sel[["x", "y"]].apply(pd.to_numeric, errors="coerce").isna().any(axis=1)
    if bad_xy.any():
        raise STError(f"{sel_path}: {int(bad_xy.sum())} row(s) have no integer array position x/y, "
                      f"first at line {int(np.flatnonzero(bad_xy.to_numpy())[0]) + 2}")
    sel["spot"] = sel["x"].astype(int).astype(str) + "x" + sel["y"].astype(int).astype(str)
    if sel["spot"].duplicated().any():
        raise STError(f"{sel_path}: duplicated spot(s) {sel['spot'][sel['spot'].duplicated()].tolist()[:5]}")
    sel = sel.set_index("spot")
    if "selected" not in sel.columns:
        sel["selected"] = 1

    try:
        counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    except Exception as exc:
        raise STError(f"{counts_path}: cannot read counts table: {exc}") from exc
    counts.index = counts.index.astype(str)
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise STError(f"{counts_path}: empty counts table")
    if not all(np.issubdtype(t, np.number) for t in counts.dtypes):
        raise STError(f"{counts_path}: counts must be numeric (spots x genes with a header row of gene names)")
    if counts.index.duplicated().any():
        raise STError(f"{counts_path}: duplicated spot row(s) {counts.index[counts.index.duplicated()].tolist()[:5]}")
    unknown = counts.index.difference(sel.index)
    if len(unknown):
        raise STError(
            f"{counts_path} and {sel_path} do not match: {len(unknown)} of {len(counts)} counts rows have no spot in "
            f"the selection file (e.g. {list(unknown[:5])})"
        )

    selected = sel.index[sel["selected"].astype(int) == 1]
    not_selected = sel.index[sel["selected"].astype(int) != 1]
    no_counts = selected.difference(counts.index, sort=False)
    keep = [s for s in counts.index if s in set(selected)]
    X = sp.csr_matrix(counts.loc[keep].to_numpy(dtype=np.float32))
    obs = sel.loc[keep].copy()
    obs = obs.rename(columns={"x": "array_col", "y": "array_row"})  # scanpy's and HEST's names: x is the column
    obs["selected"] = obs["selected"].astype(int)
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    validate_positions(sel.loc[selected, ["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64), list(selected), str(sel_path))
    mpp, spacing_px = legacy_st_mpp(_inside_image(sel.loc[selected], image_path))
    excluded = {"not_selected": list(not_selected), "no_counts": list(no_counts)}
    finish_section(adata, section_id, image_path, mpp, f"array spacing {ST_SPOT_SPACING_UM:g} um / {spacing_px:.2f} px", excluded,
            {"spot_diameter_fullres": 100.0 / mpp, "tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0},
            {"counts": str(counts_path.resolve()), "selection": str(sel_path.resolve())})
    return adata


def _inside_image(selection: pd.DataFrame, image_path: Path) -> pd.DataFrame:
    """The spots whose pixel centre lies inside the image (off-image spots would skew the grid fit)."""
    from eca_bio.inputs.slides import SlideError, open_slide

    try:
        width, height = open_slide(image_path, fallback_mpp=1.0, allow_unusual_mpp=True).dimensions
    except SlideError:
        return selection  # the image itself is checked (and refused, with its reason) when it is opened for tiling
    x, y = selection["pixel_x"].to_numpy(float), selection["pixel_y"].to_numpy(float)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return selection[inside] if inside.sum() >= 3 else selection


def legacy_st_mpp(selection: pd.DataFrame) -> tuple[float, float]:
    """Microns per pixel from the ST array: least-squares pixel distance per array step vs 200 um spacing.

    Fits ``pixel = A @ (x, y) + b`` over the spots (``new_x/new_y`` when present) and takes the mean
    length of A's columns as the pixel distance between neighbouring spots. Returns (mpp, pixels per step).
    """
    ax = "new_x" if "new_x" in selection.columns else "x"
    ay = "new_y" if "new_y" in selection.columns else "y"
    grid = selection[[ax, ay]].to_numpy(dtype=np.float64)
    pix = selection[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if len(grid) < 3:
        raise STError("need at least 3 spots to derive microns per pixel from the array spacing")
    design = np.hstack([grid, np.ones((len(grid), 1))])
    coef, *_ = np.linalg.lstsq(design, pix, rcond=None)
    step_px = float(np.mean(np.linalg.norm(coef[:2], axis=1)))
    if not np.isfinite(step_px) or step_px <= 0:
        raise STError("cannot derive microns per pixel: spot pixel coordinates do not follow the array grid")
    return ST_SPOT_SPACING_UM / step_px, step_px
