"""Small preprocess-stage run folders in the exact BIO_CONTRACT layout, for the model-side tests."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

ENCODER = {"name": "vit_tiny_test", "pretrained": False, "weights": None, "kwargs": {"embed_dim": 16}}


def write_slide(out_dir: Path, slide_id: str, features: np.ndarray, tokens: np.ndarray, coords: np.ndarray,
                counts: np.ndarray | None, genes: list[str], encoder: dict = ENCODER, patch_um: float = 32.0,
                patch_px: int = 64) -> dict:
    """Write ``slides/<id>.h5`` (+ ``.h5ad`` when counts are given) and return the manifest entry."""
    slides = out_dir / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    n = features.shape[0]
    barcodes = [f"{slide_id}_{i}x{i}" for i in range(n)]
    with h5py.File(slides / f"{slide_id}.h5", "w") as f:
        f["coords"] = coords.astype(np.int64)
        f["features"] = features.astype(np.float16)
        f["tokens"] = tokens.astype(np.float16)
        if counts is not None:
            f["barcodes"] = np.array(barcodes, dtype=object).astype("S")
        f.attrs.update(mpp=0.5, patch_size_px=64, patch_size_um=float(patch_um), patch_px=int(patch_px), token_grid=0, encoder=encoder["name"],
                       encoder_config=json.dumps(encoder), feature_dim=features.shape[1],
                       slide=f"/data/{slide_id}.png", slide_id=slide_id, params_hash="abc")
    h5ad = None
    if counts is not None:
        adata = ad.AnnData(X=counts.astype(np.float32), obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=genes))
        adata.obsm["spatial"] = (coords + 32).astype(np.float64)
        adata.uns["slide"] = {"image": f"/data/{slide_id}.png", "mpp": 0.5}
        adata.write_h5ad(slides / f"{slide_id}.h5ad")
        h5ad = f"slides/{slide_id}.h5ad"
    thumb = slides / f"{slide_id}.thumb.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 230, dtype=np.uint8)).save(thumb)
    return {"slide_id": slide_id, "image": f"/data/{slide_id}.png", "h5": f"slides/{slide_id}.h5", "h5ad": h5ad,
            "thumbnail": f"slides/{slide_id}.thumb.png", "n_patches": n, "mpp": 0.5, "has_expression": counts is not None}


def make_preprocess_dir(out_dir: Path, n_slides: int = 4, n_spots: int = 40, n_genes: int = 30, dim: int = 16,
                        n_tokens: int = 4, seed: int = 0, missing_gene: bool = False, encoder: dict | None = None,
                        params: dict | None = None) -> Path:
    """A preprocess output folder whose expression depends (learnably) on the features."""
    encoder = encoder or ENCODER
    params = params or {"patch_um": 32.0, "patch_px": 64}
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    genes = [f"G{i:03d}" for i in range(n_genes)]
    w = rng.normal(size=(dim, n_genes))
    entries = []
    for s in range(n_slides):
        sid = f"S{s}"
        tokens = rng.normal(size=(n_spots, n_tokens, dim)) + rng.normal(size=(n_spots, 1, dim))
        features = tokens.mean(1) + 0.1 * rng.normal(size=(n_spots, dim))
        rate = np.exp(np.clip(features @ w / np.sqrt(dim), -3, 3)) * (1 + np.arange(n_genes)[::-1] / 5)
        counts = rng.poisson(rate * (1.0 + s)).astype(np.float32)
        counts[:, 0] += 1  # no all-zero spot
        slide_genes = list(genes)
        if missing_gene and s == n_slides - 1:
            slide_genes, counts = slide_genes[1:], counts[:, 1:]
        grid = np.stack(np.meshgrid(np.arange(8), np.arange(int(np.ceil(n_spots / 8)))), -1).reshape(-1, 2)[:n_spots]
        entries.append(write_slide(out_dir, sid, features, tokens, grid * 64, counts, slide_genes, encoder,
                                   params.get("patch_um", 32.0), params.get("patch_px", 64)))
    manifest = {"encoder": encoder, "feature_dim": dim, "params": params, "slides": entries}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir
