"""Shared fixtures for the bio tests: real data paths, a tiny encoder, tiny legacy-ST and Visium folders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HER2ST = DATA / "her2st"
CMU_SVS = DATA / "wsi" / "cmu_small_region.svs"
HER2ST_SPOTS = {"B4": 283, "C2": 187, "C3": 180, "C4": 184}

TINY_ENCODER = {
    "name": "vit_tiny_patch16_224",
    "pretrained": False,
    "kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2},
}


@pytest.fixture(scope="session")
def her2st() -> Path:
    assert HER2ST.is_dir(), f"real test data missing: {HER2ST}"
    return HER2ST


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    assert CMU_SVS.is_file(), f"real test data missing: {CMU_SVS}"
    return CMU_SVS


@pytest.fixture
def tiny_encoder() -> dict:
    return json.loads(json.dumps(TINY_ENCODER))


def tissue_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """White slide with a pink/purple textured tissue ellipse in the middle. ``seed`` draws the texture and a broad
    stain gradient, so slides of different seeds look different at a glance too (the same-image check's thumbnails)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (245, 245, 245))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([width * 0.1, height * 0.1, width * 0.9, height * 0.9], fill=255)
    tissue = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8) + np.array([170, 90, 160], dtype=np.uint8)
    angle, freq, phase = np.random.default_rng([seed, 7]).uniform([0, 1.5, 0], [np.pi, 3.5, 2 * np.pi])
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    wave = 25 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    tissue = np.clip(tissue.astype(np.float32) + wave[..., None], 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(tissue), mask=mask)
    return img


def make_legacy_st(folder: Path, section: str = "S1", n: int = 5, spacing_px: float = 100.0, origin: float = 150.0,
                   image_size: tuple[int, int] = (800, 800), extra_rows: int = 0, zero_spot: bool = False,
                   shift: tuple[float, float] = (0.0, 0.0), image_name: str | None = None, seed: int = 1) -> Path:
    """An n x n legacy-ST section: <id>.tsv.gz counts, <id>_selection.tsv, an H&E-like JPEG (mpp = 200/spacing).
    ``seed`` draws the counts and the tissue texture: sections made with different seeds are different sections."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, counts = [], []
    genes = [f"GENE{i}" for i in range(12)]
    for gx in range(1, n + 1):
        for gy in range(1, n + 1):
            px = origin + (gx - 1) * spacing_px + shift[0]
            py = origin + (gy - 1) * spacing_px + shift[1]
            rows.append(f"{gx}\t{gy}\t{gx:.3f}\t{gy:.3f}\t{px:.2f}\t{py:.2f}\t1")
            counts.append((f"{gx}x{gy}", rng.integers(1, 20, size=len(genes))))
    if zero_spot:
        counts[0] = (counts[0][0], np.zeros(len(genes), dtype=int))
    for k in range(extra_rows):  # counts rows with no spot in the selection file
        counts.append((f"{90 + k}x{90 + k}", rng.integers(1, 20, size=len(genes))))
    (folder / f"{section}_selection.tsv").write_text("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + "\n".join(rows) + "\n")
    lines = ["\t" + "\t".join(genes)] + [name + "\t" + "\t".join(str(int(v)) for v in vals) for name, vals in counts]
    with gzip.open(folder / f"{section}.tsv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    tissue_image(*image_size, seed=seed - 1).save(folder / (image_name or f"HE_{section}.jpg"), quality=90)
    return folder


def write_10x_h5(path: Path, matrix: np.ndarray, barcodes: list[str], gene_ids: list[str], gene_names: list[str]) -> None:
    """Cell Ranger >= 3 feature-barcode HDF5 (features x barcodes CSC) written with h5py."""
    import scipy.sparse as sp

    csc = sp.csc_matrix(matrix.T.astype(np.int32))  # (features, barcodes)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=csc.data)
        g.create_dataset("indices", data=csc.indices.astype(np.int64))
        g.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        feats = g.create_group("features")
        feats.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        feats.create_dataset("name", data=np.array(gene_names, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(gene_ids), dtype="S"))
        feats.create_dataset("genome", data=np.array(["GRCh38"] * len(gene_ids), dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def make_visium(folder: Path, header: bool = True, n_rows: int = 4, n_cols: int = 5, image_size: tuple[int, int] = (640, 560),
                mpp_tag: float | None = None, seed: int = 0, image_seed: int | None = None) -> Path:
    """A tiny Space Ranger folder: filtered_feature_bc_matrix.h5, spatial/{tissue_positions,scalefactors}, a .tif.
    ``seed`` draws the counts, ``image_seed`` (default: ``seed``) the tissue image."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    spatial = folder / "spatial"
    spatial.mkdir(exist_ok=True)
    rng = np.random.default_rng(2 + seed)
    positions, barcodes = [], []
    for r in range(n_rows):
        for c in range(n_cols):
            bc = f"AAAC{r:02d}{c:02d}-1"
            in_tissue = 0 if (r == 0 and c == 0) else 1
            prow, pcol = 120 + r * 100, 100 + c * 100 + (50 if r % 2 else 0)  # hexagonal offset rows
            positions.append(f"{bc},{in_tissue},{r},{c * 2 + r % 2},{prow},{pcol}")
            barcodes.append(bc)
    text = "\n".join(positions) + "\n"
    if header:
        text = "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + text
    (spatial / ("tissue_positions.csv" if header else "tissue_positions_list.csv")).write_text(text)
    (spatial / "scalefactors_json.json").write_text(json.dumps(
        {"spot_diameter_fullres": 55.0, "tissue_hires_scalef": 0.5, "fiducial_diameter_fullres": 85.0, "tissue_lowres_scalef": 0.1}))
    genes = [f"ENSG{i:05d}" for i in range(15)]
    names = [f"G{i}" for i in range(14)] + ["G0"]  # a duplicated symbol, as in real data
    counts = rng.integers(0, 9, size=(len(barcodes), len(genes)))
    counts[1] = 0  # a barcode with no counts
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, genes, names)
    img = np.asarray(tissue_image(*image_size, seed=seed if image_seed is None else image_seed))
    kwargs = {}
    if mpp_tag is not None:
        kwargs = {"resolution": (1e4 / mpp_tag, 1e4 / mpp_tag), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(folder / "tissue_fullres.tif", img, photometric="rgb", **kwargs)
    Image.fromarray(img).resize((image_size[0] // 2, image_size[1] // 2)).save(spatial / "tissue_hires_image.png")
    return folder
