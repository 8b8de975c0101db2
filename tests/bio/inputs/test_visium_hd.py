"""Visium HD: binned_outputs/<bin>/ as 10x documents it (parquet positions, bin scale factors), bins as spots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eca_bio.features.preprocess import run_preprocess
from eca_bio.inputs.st import STError, detect_layout, find_sections, read_visium_hd

from tests.bio.conftest import tissue_image, write_10x_h5
from tests.bio.features.test_preprocess import CPU, cfg_for


def make_visium_hd(root, bins=(("square_008um", 8.0), ("square_016um", 16.0)), mpp=0.25, n=6, extra_barcodes=0):
    """A Space Ranger (Visium HD) run folder: the microscope image, and per bin size its matrix, parquet, scale factors."""
    root.mkdir(parents=True, exist_ok=True)
    tissue_image(900, 900).save(root / "microscope.tif")
    rng = np.random.default_rng(0)
    for name, size_um in bins:
        d = root / "binned_outputs" / name
        (d / "spatial").mkdir(parents=True)
        step = size_um / mpp  # bins tile the plane
        barcodes = [f"s_{int(size_um):03d}um_{i:05d}_{j:05d}-1" for i in range(n) for j in range(n)]
        rows = [{"barcode": b, "in_tissue": 1, "array_row": i, "array_col": j,
                 "pxl_row_in_fullres": 300 + i * step, "pxl_col_in_fullres": 300 + j * step}
                for b, (i, j) in zip(barcodes, [(i, j) for i in range(n) for j in range(n)])]
        pd.DataFrame(rows).to_parquet(d / "spatial" / "tissue_positions.parquet")
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", rng.integers(0, 9, size=(n * n + extra_barcodes, 10)),
                     barcodes + [f"x{k}-1" for k in range(extra_barcodes)], [f"ENSG{k:05d}" for k in range(10)],
                     [f"GENE{k}" for k in range(10)])
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps({
            "spot_diameter_fullres": step, "bin_size_um": size_um, "microns_per_pixel": mpp,
            "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1, "fiducial_diameter_fullres": 4 * step,
            "regist_target_img_scalef": 0.5}))
    return root


def test_visium_hd_bins_are_the_spots(tmp_path):
    root = make_visium_hd(tmp_path / "hd_run")
    assert detect_layout(root) == "visium_hd" and [s.format for s in find_sections(root)] == ["visium_hd"]
    adata = read_visium_hd(root, bin_name="square_016um")
    st = adata.uns["st"]
    assert adata.n_obs == 36 and st["array_mpp"] == 0.25 and st["image"].endswith("microscope.tif")
    assert adata.uns["spatial"]["hd_run"]["scalefactors"]["spot_diameter_fullres"] == 64.0  # 16 um bins at 0.25 um/px
    assert "Visium HD microns_per_pixel (16 um bins)" in st["array_mpp_source"]
    np.testing.assert_allclose(adata.obsm["spatial"][1], [300 + 64, 300])  # (x = column, y = row) in full-res pixels
    manifest = run_preprocess(cfg_for(st_dir=str(root), patch_um=16.0, visium_hd_bin="square_016um"), tmp_path / "pre", CPU,
                              progress=False)
    assert manifest["slides"][0]["n_patches"] == 36 and manifest["slides"][0]["patch_size_px"] == 64


def test_visium_hd_errors_name_the_file(tmp_path):
    root = make_visium_hd(tmp_path / "hd_run", extra_barcodes=2)
    with pytest.raises(STError, match=r"no bin folder 'square_002um'; available: \['square_008um', 'square_016um'\]"):
        read_visium_hd(root, bin_name="square_002um")
    with pytest.raises(STError, match=r"filtered_feature_bc_matrix\.h5 and .*tissue_positions\.parquet do not match: 2 of 38 barcodes"):
        read_visium_hd(root, bin_name="square_008um")


def test_the_microscope_image_is_found_where_10x_puts_it(tmp_path):
    root = make_visium_hd(tmp_path / "hd_run")
    (root / "microscope_image").mkdir()
    (root / "microscope.tif").rename(root / "microscope_image" / "Visium_HD_Human_tissue_image.btf.tif")
    adata = read_visium_hd(root, bin_name="square_016um")
    assert adata.uns["st"]["image"].endswith("microscope_image/Visium_HD_Human_tissue_image.btf.tif")
    assert "image_fallback" not in adata.uns["st"]  # the full-resolution image, not the hires PNG
