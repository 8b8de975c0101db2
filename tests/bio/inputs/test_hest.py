"""HEST-1k layout (st/<id>.h5ad, wsis/<id>.tif, metadata/<id>.json) as HEST's own reader finds it."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from eca_bio.features.preprocess import run_preprocess
from eca_bio.inputs.st import STError, detect_layout, find_sections, read_hest

from tests.bio.conftest import tissue_image
from tests.bio.features.test_preprocess import CPU, cfg_for


def make_hest(root, sample="TENX99", n=5, spacing=100.0, mpp=0.5, in_tissue_off=1, meta=None):
    """A HEST-1k folder with one Visium-like sample: n x n spots, a TIFF WSI and HEST's metadata JSON."""
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xy = np.array([[150 + i * spacing, 150 + j * spacing] for i in range(n) for j in range(n)])
    names = [f"{i}x{j}" for i in range(n) for j in range(n)]
    obs = pd.DataFrame({"in_tissue": 1, "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]}, index=names)
    obs.iloc[:in_tissue_off, 0] = 0
    adata = ad.AnnData(X=sp.csr_matrix(rng.integers(1, 30, size=(n * n, 8)).astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"G{i}" for i in range(8)]))
    adata.obsm["spatial"] = xy.astype(np.float64)
    adata.write_h5ad(root / "st" / f"{sample}.h5ad")
    tissue_image(800, 800).save(root / "wsis" / f"{sample}.tif")
    meta = {"pixel_size_um_estimated": mpp, "pixel_size_um_embedded": None, "spot_diameter": 55.0,
            "inter_spot_dist": 100.0, "st_technology": "Visium"} if meta is None else meta
    (root / "metadata" / f"{sample}.json").write_text(json.dumps(meta))
    return root


def test_hest_sample_is_read_and_preprocessed(tmp_path):
    root = make_hest(tmp_path / "hest")
    assert detect_layout(root) == "hest" and [s.section_id for s in find_sections(root)] == ["TENX99"]
    adata = read_hest(root, "TENX99")
    assert adata.n_obs == 24 and adata.uns["st"]["excluded"]["not_in_tissue"] == ["0x0"]
    assert adata.uns["st"]["array_mpp"] == 0.5 and adata.uns["spatial"]["TENX99"]["scalefactors"]["spot_diameter_fullres"] == 110.0
    manifest = run_preprocess(cfg_for(st_dir=str(root)), tmp_path / "pre", CPU, progress=False)
    entry = manifest["slides"][0]
    assert entry["slide_id"] == "TENX99" and entry["n_patches"] == 24 and entry["mpp"] == 0.5
    assert entry["patch_size_px"] == 224 and "pixel_size_um_estimated" in entry["mpp_source"]


@pytest.mark.parametrize("broken, message", [
    ("no_wsi", r"HEST sample TENX99: no whole-slide image file .*wsis/TENX99\.tif"),
    ("no_meta", r"HEST sample TENX99: no metadata file .*metadata/TENX99\.json"),
    ("no_mpp", r"TENX99\.json: no positive pixel_size_um_estimated or pixel_size_um_embedded"),
])
def test_hest_sample_with_a_missing_piece_is_named(tmp_path, broken, message):
    root = make_hest(tmp_path / "hest", meta={"spot_diameter": 55.0} if broken == "no_mpp" else None)
    if broken == "no_wsi":
        (root / "wsis" / "TENX99.tif").unlink()
    if broken == "no_meta":
        (root / "metadata" / "TENX99.json").unlink()
    with pytest.raises(STError, match=message):
        run_preprocess(cfg_for(st_dir=str(root)), tmp_path / "pre", CPU, progress=False)
    assert not (tmp_path / "pre" / "manifest.json").exists()


def test_hest_metadata_mpp_wins_over_a_tiff_written_10x_too_fine(tmp_path, capsys):
    """HEST's pyramidal TIFF writer records px/cm where pyvips takes px/mm: a 0.5 µm/px slide reads 0.05 µm/px."""
    import tifffile

    root = make_hest(tmp_path / "hest")
    tif = root / "wsis" / "TENX99.tif"
    pixels = np.asarray(tissue_image(800, 800))
    tifffile.imwrite(tif, pixels, resolution=(200_000, 200_000), resolutionunit="CENTIMETER")  # 0.05 µm/px: 10x off
    from eca_bio.inputs.slides import open_slide

    assert open_slide(tif).mpp == pytest.approx(0.05)  # what the TIFF alone says
    capsys.readouterr()
    manifest = run_preprocess(cfg_for(st_dir=str(root)), tmp_path / "pre", CPU, progress=False)
    entry = manifest["slides"][0]
    assert entry["mpp"] == 0.5 and entry["patch_size_px"] == 224 and "pixel_size_um_estimated" in entry["mpp_source"]
    err = capsys.readouterr().err
    assert "warning: TENX99: the image TENX99.tif says 0.05 um/px, HEST metadata pixel_size_um_estimated" in err
    explicit = run_preprocess(cfg_for(st_dir=str(root), mpp=0.6), tmp_path / "pre2", CPU, progress=False)
    assert explicit["slides"][0]["mpp"] == 0.6 and explicit["slides"][0]["mpp_source"] == "--mpp"  # explicit wins


def test_hest_metadata_patient_reaches_the_manifest(tmp_path):
    from eca_bio.features.feature_set import FeatureSet

    meta = {"pixel_size_um_estimated": 0.5, "spot_diameter": 55.0, "st_technology": "Visium", "patient": "Patient 3"}
    root = make_hest(tmp_path / "hest", meta=meta)
    manifest = run_preprocess(cfg_for(st_dir=str(root)), tmp_path / "pre", CPU, progress=False)
    assert manifest["slides"][0]["patient"] == "Patient 3"
    assert FeatureSet(tmp_path / "pre").patients() == {"TENX99": "Patient 3"}
