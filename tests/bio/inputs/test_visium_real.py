"""scanpy's real Visium test folders: hires-only images, feature metadata, and scanpy.pl.spatial on our files."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pytest
import scanpy as sc

from eca_bio.features.preprocess import run_preprocess
from eca_bio.inputs.st import read_10x_h5, read_visium

from tests.bio.conftest import DATA, make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for

matplotlib.use("Agg")
VISIUM_1 = DATA / "visium" / "scanpy_1.0.0"
PROBE_H5 = DATA / "visium" / "scanpy_2.1.0_probe" / "raw_probe_bc_matrix.h5"


def test_feature_fields_are_kept_as_scanpy_reads_them():
    ours = read_10x_h5(PROBE_H5)
    ref = sc.read_10x_h5(PROBE_H5)
    assert {"gene_ids", "probe_ids", "feature_types", "genome", "gene_name", "probe_region", "filtered_probes"} <= set(ours.var)
    assert ours.shape == ref.shape == (4987, 1000)
    assert ours.var["genome"].iloc[0] == "mm10" and ours.var["gene_ids"].iloc[0] == ref.var["gene_ids"].iloc[0]
    assert ours.X.dtype == np.float32 and abs(ours.X.sum() - ref.X.sum()) < 1e-3 * ref.X.sum()


def test_hires_only_visium_is_tiled_on_the_hires_image(tmp_path, capfd):
    adata = read_visium(VISIUM_1)
    st = adata.uns["st"]
    assert st["image"].endswith("spatial/tissue_hires_image.png") and "tiling spatial/tissue_hires_image.png" in st["image_fallback"]
    # 55 um over 89.43 full-res px, the hires image being 0.150015 of full resolution
    assert st["array_mpp"] == pytest.approx(55 / (89.42751063343188 * 0.150015), rel=1e-9)
    np.testing.assert_allclose(adata.obsm["spatial"], adata.obsm["spatial_fullres"] * 0.150015)
    manifest = run_preprocess(cfg_for(st_dir=str(VISIUM_1)), tmp_path / "pre", CPU, progress=False)
    err = capfd.readouterr().err
    assert err.count("no full-resolution image") == 1 and "at 4.100 um/px" in err
    entry = manifest["slides"][0]
    assert entry["n_patches"] == 100 and entry["patch_size_px"] == 27 and entry["dimensions"] == [2000, 2000]
    out = ad.read_h5ad(tmp_path / "pre" / entry["h5ad"])
    assert list(out.var.columns) == ["gene_ids", "feature_types", "genome"]  # kept through preprocessing
    sc.pl.spatial(out, color=out.var_names[0], show=False)  # scanpy draws it with its defaults


def test_too_small_a_patch_on_the_hires_image_is_refused(tmp_path):
    from eca_bio.features.preprocess import PreprocessError

    with pytest.raises(PreprocessError, match=r"a 20 um patch is only 5 px at 4\.09\d+ um/px"):
        run_preprocess(cfg_for(st_dir=str(VISIUM_1), patch_um=20.0), tmp_path / "pre", CPU, progress=False)


def test_legacy_st_h5ad_carries_images_for_scanpy(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1", n=5)
    manifest = run_preprocess(cfg_for(st_dir=str(tmp_path / "st")), tmp_path / "pre", CPU, progress=False)
    out = ad.read_h5ad(tmp_path / "pre" / manifest["slides"][0]["h5ad"])
    lib = out.uns["spatial"]["S1"]
    assert set(lib["images"]) == {"hires", "lowres"} and 0 < lib["scalefactors"]["tissue_hires_scalef"] <= 1
    sc.pl.spatial(out, color=out.var_names[0], show=False)  # was StopIteration: no image


def test_exported_predictions_carry_the_genes_feature_metadata(tmp_path):
    from eca_bio.report.export import gene_metadata, prediction_anndata, write_h5ad

    manifest = run_preprocess(cfg_for(st_dir=str(VISIUM_1)), tmp_path / "pre", CPU, progress=False)
    counts = ad.read_h5ad(tmp_path / "pre" / manifest["slides"][0]["h5ad"])
    genes = list(counts.var_names[:3])
    pred = prediction_anndata(np.zeros((counts.n_obs, 3)), genes, list(counts.obs_names), counts.obsm["spatial"], "v1",
                              truth=np.ones((counts.n_obs, 3)), var=gene_metadata(tmp_path / "pre" / manifest["slides"][0]["h5ad"]))
    back = ad.read_h5ad(write_h5ad(pred, tmp_path / "v1.h5ad"))
    assert back.var.loc[genes[0], "genome"] == "GRCh38" and back.var.loc[genes[0], "feature_types"] == "Gene Expression"
    assert list(back.var["gene_ids"]) == list(counts.var.loc[genes, "gene_ids"])
