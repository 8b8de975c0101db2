"""Spatial-transcriptomics loaders: 10x Visium Space Ranger folders and the legacy ST layout -> AnnData.

Both return raw counts with ``obsm['spatial']`` = full-resolution pixel (x, y) of each spot centre,
``uns['spatial'][library_id]`` in the scanpy/squidpy layout, and ``uns['st']`` with the image path,
the microns per pixel implied by the array geometry and the spots that were excluded (and why).
Spots are never dropped silently: ``uns['st']['excluded']`` lists them by reason.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from eca_core.errors import InputError
from eca_core.io import read_json, require_self_contained_h5

ST_SPOT_SPACING_UM = 200.0  # legacy ST array: spot centre-to-centre distance (Stahl et al. 2016)
VISIUM_SPOT_DIAMETER_UM = 55.0  # 10x Visium spot diameter; scalefactors give it in full-res pixels
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".jpg", ".jpeg", ".png")
STFormat = Literal["auto", "legacy_st", "visium", "visium_hd", "hest"]
Layout = Literal["legacy_st", "visium", "visium_hd", "hest"]
VISIUM_HD_BIN = "square_016um"  # default bin of a Visium HD run (binned_outputs/square_002um | 008um | 016um)


class STError(InputError):
    """A spatial-transcriptomics folder or file is malformed or inconsistent."""


@dataclass
class Section:
    """One ST section found on disk."""

    section_id: str
    path: Path
    format: Layout


@dataclass(frozen=True)
class LayoutKind:
    """One spatial layout, the one place that knows it: how a folder of it is recognised, which sections it holds,
    how one section is read, what a user is told a folder of it holds, and whether its µm/px beats the image's."""

    detect: Callable[[Path], bool]
    sections: Callable[[Path], list[str]]
    read: Callable[[Section, Any, str], ad.AnnData]  # (section, image or None, Visium HD bin) -> raw counts AnnData
    message: str
    mpp_wins: bool = False  # HEST: its own estimate beats the TIFF's metadata, which can be 10x off


def _is_hest(folder: Path) -> bool:
    return (folder / "st").is_dir() and (folder / "wsis").is_dir() and any((folder / "st").glob("*.h5ad"))


def _is_visium(folder: Path) -> bool:
    return (folder / "spatial").is_dir() and any((folder / n).exists() for n in ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5"))


# layout -> its kind, in detection order; adding a layout is one entry here (and its name in eca_bio.configs.LAYOUT_NAMES)
LAYOUTS: dict[str, LayoutKind] = {
    "hest": LayoutKind(_is_hest, lambda f: [p.stem for p in sorted((f / "st").glob("*.h5ad"))],
                       lambda s, image, _: read_hest(s.path, s.section_id, image=image),
                       "a HEST-1k folder (st/<id>.h5ad, wsis/<id>.tif, metadata/<id>.json)", mpp_wins=True),
    "visium_hd": LayoutKind(lambda f: (f / "binned_outputs").is_dir(), lambda f: [f.name],
                            lambda s, image, hd_bin: read_visium_hd(s.path, image=image, library_id=s.section_id, bin_name=hd_bin),
                            "a Visium HD Space Ranger folder (binned_outputs/<bin>/ + microscope image)"),
    "visium": LayoutKind(_is_visium, lambda f: [f.name], lambda s, image, _: read_visium(s.path, image=image, library_id=s.section_id),
                         "a Visium Space Ranger folder (filtered_feature_bc_matrix.h5 + spatial/)"),
    "legacy_st": LayoutKind(lambda f: bool(_legacy_pairs(f)), lambda f: _legacy_pairs(f),
                            lambda s, image, _: read_legacy_st(s.path, s.section_id, image=image),
                            "a legacy ST folder (<id>.tsv.gz + <id>_selection.tsv + an H&E image)"),
}


def detect_layout(path: str | os.PathLike) -> Layout | None:
    """The layout of a section folder (the first of :data:`LAYOUTS` that recognises it), else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((name for name, kind in LAYOUTS.items() if kind.detect(path)), None)


def find_sections(st_dir: str | os.PathLike, fmt: STFormat = "auto", sections: list[str] | None = None) -> list[Section]:
    """Sections in ``st_dir``: the folder itself if it is one, else its sub-folders that are (sorted by name)."""
    st_dir = Path(st_dir)
    if not st_dir.is_dir():
        raise STError(f"{st_dir}: no such directory")
    found: list[Section] = []
    own = detect_layout(st_dir)
    candidates = [st_dir] if own else sorted(p for p in st_dir.iterdir() if p.is_dir())
    for folder in candidates:
        layout = detect_layout(folder)
        if layout is None or (fmt != "auto" and layout != fmt):
            continue
        found.extend(Section(sid, folder, layout) for sid in LAYOUTS[layout].sections(folder))
    if not found:
        want = LAYOUTS[fmt].message if fmt in LAYOUTS else ", ".join(k.message for k in LAYOUTS.values())
        raise STError(f"{st_dir}: not {want}, nor a folder of such folders")
    ids = [s.section_id for s in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise STError(f"{st_dir}: section id(s) {dupes} occur more than once")
    if sections is not None:
        missing = sorted(set(sections) - set(ids))
        if missing:
            raise STError(f"{st_dir}: section(s) {missing} not found; available: {ids}")
        found = [s for s in found if s.section_id in set(sections)]
    return found


def read_section(section: Section, image: str | os.PathLike | None = None, hd_bin: str = VISIUM_HD_BIN) -> ad.AnnData:
    """Load a section found by ``find_sections``."""
    return LAYOUTS[section.format].read(section, image, hd_bin)


# ----------------------------------------------------------------------------------------- legacy ST


def _legacy_pairs(folder: Path) -> list[str]:
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
        pairs = _legacy_pairs(folder)
        if len(pairs) != 1:
            raise STError(f"{folder}: expected one <id>_selection.tsv + <id>.tsv.gz pair, found {pairs or 'none'}")
        section_id = pairs[0]
    counts_path = next((folder / f"{section_id}{e}" for e in (".tsv.gz", ".tsv") if (folder / f"{section_id}{e}").exists()), None)
    sel_path = folder / f"{section_id}_selection.tsv"
    if counts_path is None or not sel_path.exists():
        raise STError(f"{folder}: missing {section_id}.tsv.gz or {section_id}_selection.tsv")
    image_path = Path(image) if image is not None else _find_image(folder, section_id)

    sel = _read_table(sel_path, sep="\t")
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
    _finish(adata, section_id, image_path, mpp, f"array spacing {ST_SPOT_SPACING_UM:g} um / {spacing_px:.2f} px", excluded,
            {"spot_diameter_fullres": 100.0 / mpp, "tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0},
            {"counts": str(counts_path.resolve()), "selection": str(sel_path.resolve())})
    return adata


def _inside_image(selection: pd.DataFrame, image_path: Path) -> pd.DataFrame:
    """The spots whose pixel centre lies inside the image (off-image spots would skew the grid fit)."""
    from eca_bio.slides import SlideError, open_slide

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


# ----------------------------------------------------------------------------------------- Visium


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
    if image is None and not _image_candidates(folder):
        image, fallback, scalefactors = _downscaled_image(spatial, scalefactors, sf_path)
        adata.obsm["spatial_fullres"] = adata.obsm["spatial"].copy()
        adata.obsm["spatial"] = adata.obsm["spatial"] * fallback["scale"]  # pixels of the image that is tiled
    image_path = Path(image) if image is not None else _find_image(folder, None)
    if hd or "bin_size_um" in scalefactors:  # Visium HD: bins, not 55 um spots
        mpp, source = _visium_hd_mpp(scalefactors, sf_path, fallback)
        scalefactors = dict(scalefactors) | {"spot_diameter_fullres": float(scalefactors["bin_size_um"]) / mpp}
    else:
        mpp = VISIUM_SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"])
        source = f"spot diameter {VISIUM_SPOT_DIAMETER_UM:g} um / {float(scalefactors['spot_diameter_fullres']):.2f} px"
    _finish(adata, library_id, image_path, mpp, source,
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

            from eca_bio.slides import DEFAULT_MAX_MEGAPIXELS, check_decode_size

            with Image.open(spatial / name) as im:
                check_decode_size(spatial / name, im.size, DEFAULT_MAX_MEGAPIXELS)
                images[key] = np.asarray(im.convert("RGB"))
    adata.uns["spatial"][library_id]["images"] = images
    return adata


def _visium_hd_mpp(scalefactors: dict[str, Any], sf_path: Path, fallback: dict[str, Any] | None) -> tuple[float, str]:
    """Microns per pixel of a Visium HD bin folder: ``microns_per_pixel``, else ``bin_size_um`` over the bin's
    ``spot_diameter_fullres`` (its side in pixels); never the 55 um Visium spot."""
    bin_um = scalefactors.get("bin_size_um")
    if not _positive(bin_um):
        raise STError(f"{sf_path}: a Visium HD bin folder without a positive 'bin_size_um'; the bins' size is unknown")
    if _positive(scalefactors.get("microns_per_pixel")):
        mpp = float(scalefactors["microns_per_pixel"]) / (fallback["scale"] if fallback else 1.0)
        return mpp, f"Visium HD microns_per_pixel ({float(bin_um):g} um bins)"
    if not _positive(scalefactors.get("spot_diameter_fullres")):
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


# ----------------------------------------------------------------------------------------- HEST-1k


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
    mpp_key = next((k for k in ("pixel_size_um_estimated", "pixel_size_um_embedded") if _positive(meta.get(k))), None)
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
    spot_um = float(meta["spot_diameter"]) if _positive(meta.get("spot_diameter")) else VISIUM_SPOT_DIAMETER_UM
    _finish(adata, sample_id, image_path, mpp, f"HEST metadata {mpp_key} ({meta_path})",
            {"not_in_tissue": not_in_tissue}, {"spot_diameter_fullres": spot_um / mpp},
            {"counts": str(h5ad_path.resolve()), "positions": str(h5ad_path.resolve()), "metadata": str(meta_path.resolve())})
    adata.uns["st"]["technology"] = str(meta.get("st_technology", ""))
    return adata


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------- shared


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


def _finish(adata: ad.AnnData, library_id: str, image_path: Path, mpp: float, mpp_source: str,
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


def _image_candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _hd_image_candidates(folder: Path) -> list[Path]:
    """A Visium HD run's microscope image where 10x and spatialdata-io look: ``microscope_image/``, then
    ``<prefix>tissue_image.*`` and other images in the run folder."""
    sub = folder / "microscope_image"
    found = _image_candidates(sub) if sub.is_dir() else []
    return found or _image_candidates(folder)


def _downscaled_image(spatial: Path, scalefactors: dict, sf_path: Path) -> tuple[Path, dict[str, Any], dict]:
    """Without a full-resolution image: Space Ranger's hires (else lowres) PNG, with scale factors for its pixels.

    Coordinates and the spot diameter are multiplied by the image's scale factor, so the PNG plays the
    full-resolution image (its own hires scale factor becomes 1) and the microns per pixel follow.
    """
    for name, key in (("tissue_hires_image.png", "tissue_hires_scalef"), ("tissue_lowres_image.png", "tissue_lowres_scalef")):
        if (spatial / name).is_file():
            if not _positive(scalefactors.get(key)):
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


def _find_image(folder: Path, section_id: str | None) -> Path:
    images = _image_candidates(folder)
    if section_id is not None and len(images) > 1:
        named = [p for p in images if section_id in p.stem]
        images = named or images
    if len(images) == 1:
        return images[0]
    if not images:
        raise STError(f"{folder}: no full-resolution image ({', '.join(IMAGE_SUFFIXES)}) found; give the image path")
    raise STError(f"{folder}: several candidate full-resolution images {[p.name for p in images]}; give the image path")


def _read_table(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise STError(f"{path}: cannot read table: {exc}") from exc
