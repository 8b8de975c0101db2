"""Predictions as AnnData ``.h5ad`` per slide (DESIGN §3) and PNG maps of chosen genes.

The AnnData carries ``X`` predicted expression (min–max scaled targets), ``layers['truth']`` where
measured, ``obsm['spatial']`` full-res pixel (x, y), ``uns['spatial'][library_id]`` with ``images``
(``hires``/``lowres``) and ``scalefactors`` so ``scanpy.pl.spatial`` / ``squidpy.pl.spatial_scatter``
draw it over the H&E, and ``uns['eca']`` with metrics and configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from eca_core.io import atomic_path

TARGET_UNITS = {"egn": "log10(1 + counts)", "libsize": "log1p(1e4 * counts / library size)"}


def prediction_anndata(pred: np.ndarray, genes: list[str], obs_names: list[str], centres: np.ndarray,
                       library_id: str, truth: np.ndarray | None = None, images: dict[str, np.ndarray] | None = None,
                       scalefactors: dict[str, float] | None = None, spot_diameter_px: float | None = None,
                       eca: dict[str, Any] | None = None, var: pd.DataFrame | None = None,
                       spec: dict[str, Any] | None = None) -> ad.AnnData:
    """AnnData of one slide's predictions with the DESIGN §3 fields; ``var`` adds the genes' feature metadata.

    X holds the predictions and ``layers['measured']`` the measured values, both per-gene min-max scaled
    with the training slides' statistics; ``spec`` (a TargetSpec as a dict) puts those statistics in
    ``var['target_min']`` / ``var['target_max']`` so :func:`unscale` maps either back to the target's units.
    """
    pred = np.asarray(pred, dtype=np.float32)
    if pred.shape != (len(obs_names), len(genes)):
        raise ValueError(f"predictions {pred.shape} do not match {len(obs_names)} spots x {len(genes)} genes")
    index = pd.Index([str(g) for g in genes], dtype=str)
    var = pd.DataFrame(index=index) if var is None else var.reindex(index)
    adata = ad.AnnData(X=pred, obs=pd.DataFrame(index=pd.Index([str(o) for o in obs_names], dtype=str)), var=var)
    adata.obs["slide_id"] = library_id
    if truth is not None:
        adata.layers["measured"] = np.asarray(truth, dtype=np.float32)
    units = "the training targets"
    if spec is not None:
        order = {g: i for i, g in enumerate(spec["genes"])}
        idx = [order[str(g)] for g in genes]
        adata.var["target_min"] = np.asarray(spec["minimum"], dtype=np.float64)[idx]
        adata.var["target_max"] = np.asarray(spec["maximum"], dtype=np.float64)[idx]
        units = TARGET_UNITS.get(spec["transform"], spec["transform"])
    adata.obsm["spatial"] = np.asarray(centres, dtype=np.float64)
    sf = dict(scalefactors or {"tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0})
    sf["spot_diameter_fullres"] = float(spot_diameter_px or 1.0)
    adata.uns["spatial"] = {library_id: {"images": dict(images or {}), "scalefactors": sf,
                                         "metadata": {"source": "eca_bio"}}}
    note = ("X = predicted" + (", layers['measured'] = measured" if truth is not None else " (no measured expression)")
            + f": {units} per gene, min-max scaled with the training slides' statistics"
            + ("; in those units: X * (var.target_max - var.target_min) + var.target_min (eca_bio.report.export.unscale)"
               if spec is not None else ""))
    adata.uns["eca"] = _jsonable({**(eca or {}), "note": note})
    return adata


def unscale(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    """X (or ``layers[layer]``, e.g. 'measured') back in the target's units, e.g. log10(1 + counts)."""
    if "target_min" not in adata.var:
        raise ValueError("this .h5ad has no var['target_min'] / var['target_max'] (written before they were stored)")
    x = np.asarray(adata.X if layer is None else adata.layers[layer], dtype=np.float64)
    lo, hi = adata.var["target_min"].to_numpy(), adata.var["target_max"].to_numpy()
    return x * np.where(hi > lo, hi - lo, 1.0) + lo


def gene_metadata(h5ad_path: str | Path) -> pd.DataFrame | None:
    """The ``var`` table (gene_ids, feature_types, genome, probe fields) of a slide's counts file, or None."""
    return section_metadata(h5ad_path)[0]


def section_metadata(h5ad_path: str | Path | None) -> tuple[pd.DataFrame | None, float | None]:
    """From a section's preprocess .h5ad, opened once: its ``var`` table (None without feature fields) and its spot
    diameter in full-res pixels from the reader's scale factors (None if absent); (None, None) without a file."""
    if h5ad_path is None or not Path(h5ad_path).is_file():
        return None, None
    adata = ad.read_h5ad(h5ad_path, backed="r")
    try:
        var = adata.var.copy() if adata.var.shape[1] else None
        diameters = [lib.get("scalefactors", {}).get("spot_diameter_fullres") for lib in (adata.uns.get("spatial") or {}).values()]
        return var, next((float(d) for d in diameters if d), None)
    finally:
        adata.file.close()


def _jsonable(obj: Any) -> Any:
    """Nested dicts of plain values that h5ad can store (None -> 'null', lists -> arrays of one type)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj) and obj:
            return np.asarray(obj, dtype=np.float64)
        if all(isinstance(v, str) for v in obj) and obj:
            return np.asarray(obj, dtype=str)
        return json.dumps(obj, default=str)
    if obj is None:
        return "null"
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` atomically (a crash leaves no half-written .h5ad)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def top_genes(adata: ad.AnnData, n: int) -> list[str]:
    """The ``n`` genes best predicted (by PCC with the truth) or, without truth, the most variable predictions."""
    x = np.asarray(adata.X)
    if "measured" in adata.layers and adata.n_obs > 1:
        from eca_core.metrics import pearson_per_column

        r = np.nan_to_num(pearson_per_column(x, np.asarray(adata.layers["measured"])), nan=-2.0)
        order = np.argsort(-r, kind="stable")
    else:
        order = np.argsort(-x.std(0), kind="stable")
    return [adata.var_names[i] for i in order[:n]]


def _background(img: np.ndarray, view: tuple[float, float, float, float], max_px: int = 800) -> tuple[np.ndarray, tuple]:
    """The part of the slide image a panel shows (``view`` = x0, x1, y_bottom, y_top in image pixels), subsampled to at
    most ``max_px`` a side (a panel is ~400 px), with its imshow extent: resampling the whole image per panel is slow."""
    h, w = img.shape[:2]
    x0, x1 = max(0, int(np.floor(view[0]))), min(w, int(np.ceil(view[1])))
    y0, y1 = max(0, int(np.floor(view[3]))), min(h, int(np.ceil(view[2])))
    if x1 <= x0 or y1 <= y0:
        return img, (-0.5, w - 0.5, h - 0.5, -0.5)
    step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / max_px)))
    crop = img[y0:y1:step, x0:x1:step]
    return crop, (x0 - 0.5, x0 - 0.5 + crop.shape[1] * step, y0 - 0.5 + crop.shape[0] * step, y0 - 0.5)


def plot_gene_maps(adata: ad.AnnData, genes: list[str], path: str | Path, image_key: str = "hires",
                   title: str = "") -> Path:
    """PNG: for each gene, predicted (and measured, if present) values drawn over the slide image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    library_id = next(iter(adata.uns["spatial"]))
    lib = adata.uns["spatial"][library_id]
    img = lib["images"].get(image_key)
    scale = float(lib["scalefactors"].get(f"tissue_{image_key}_scalef", 1.0))
    xy = np.asarray(adata.obsm["spatial"]) * scale
    has_truth = "measured" in adata.layers
    moran = {}
    if len(xy) >= 3:  # spatial autocorrelation of each drawn map, so smooth predictions show in the titles
        from eca_bio.report.spatial_fidelity import morans_i

        cols_idx = [list(adata.var_names).index(g) for g in genes]
        moran["predicted"] = morans_i(np.asarray(adata.X)[:, cols_idx], adata.obsm["spatial"])
        if has_truth:
            moran["measured"] = morans_i(np.asarray(adata.layers["measured"])[:, cols_idx], adata.obsm["spatial"])
    cols = 2 if has_truth else 1
    fig, axes = plt.subplots(len(genes), cols, figsize=(4.2 * cols, 3.8 * len(genes)), squeeze=False)
    diam = float(lib["scalefactors"].get("spot_diameter_fullres", 1.0)) * scale  # in image pixels
    pad = 1.5 * diam  # zoom to the spots: tissue is often a small part of the slide
    view = (xy[:, 0].min() - pad, xy[:, 0].max() + pad, xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    background, extent = _background(img, view) if img is not None and len(img) else (None, None)
    drawn = []
    for row, gene in enumerate(genes):
        j = list(adata.var_names).index(gene)
        panels = [("predicted", np.asarray(adata.X)[:, j])]
        if has_truth:
            panels.append(("measured", np.asarray(adata.layers["measured"])[:, j]))
        vmin = min(float(v.min()) for _, v in panels)
        vmax = max(float(v.max()) for _, v in panels)
        for col, (name, values) in enumerate(panels):
            ax = axes[row, col]
            if background is not None:
                ax.imshow(background, extent=extent)
            ax.set_xlim(*view[:2])
            ax.set_ylim(*view[2:])
            ax.set_aspect("equal")
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", vmin=vmin, vmax=vmax,
                            marker="o" if has_truth else "s", alpha=0.85, linewidths=0)
            drawn.append((ax, sc))
            i = moran.get(name, [np.nan] * len(genes))[row]
            ax.set_title(f"{gene} {name}" + (f" (Moran's I {i:.2f})" if np.isfinite(i) else ""), fontsize=9)
            ax.set_axis_off()
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    for ax, sc in drawn:  # marker size = spot diameter in data units, known only once the layout is fixed
        ax.apply_aspect()
        x0, x1 = ax.get_xlim()
        points_per_unit = ax.get_window_extent().width / abs(x1 - x0) * 72.0 / fig.dpi
        sc.set_sizes([max(1.0, (diam * points_per_unit) ** 2)])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, pil_kwargs={"compress_level": 1})  # zlib level 1: a third of the time, a little larger
    plt.close(fig)
    return Path(path)
