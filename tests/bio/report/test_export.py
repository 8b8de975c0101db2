"""Prediction .h5ad: DESIGN §3 fields, round-trip through disk, drawable by scanpy.pl.spatial, gene maps."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pytest
from PIL import Image

from eca_bio.inputs.slides import slide_images
from eca_bio.report.export import plot_gene_maps, prediction_anndata, top_genes, write_h5ad

matplotlib.use("Agg")


@pytest.fixture
def slide_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "slide.png"
    Image.fromarray(rng.integers(100, 255, size=(300, 400, 3), dtype=np.uint8)).save(path)
    return path


def test_h5ad_round_trip_has_design_fields(tmp_path, slide_png):
    rng = np.random.default_rng(1)
    pred, truth = rng.uniform(size=(12, 5)), rng.uniform(size=(12, 5))
    centres = np.stack([np.linspace(20, 380, 12), np.linspace(20, 280, 12)], 1)
    images, scales = slide_images(slide_png, mpp=1.0, hires_px=200, lowres_px=100)
    assert images["hires"].shape == (150, 200, 3) and scales["tissue_hires_scalef"] == pytest.approx(0.5)
    adata = prediction_anndata(pred, [f"G{i}" for i in range(5)], [f"s{i}" for i in range(12)], centres, "slideA",
                               truth=truth, images=images, scalefactors=scales, spot_diameter_px=30.0,
                               eca={"method": "eca", "target_transform": "egn", "metrics": {"pcc_m": 0.5}, "x": None})
    path = write_h5ad(adata, tmp_path / "out" / "slideA.h5ad")
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.X, pred.astype(np.float32))
    np.testing.assert_allclose(back.layers["measured"], truth.astype(np.float32))
    np.testing.assert_allclose(back.obsm["spatial"], centres)
    assert list(back.var_names) == [f"G{i}" for i in range(5)]
    lib = back.uns["spatial"]["slideA"]
    assert lib["images"]["hires"].shape == (150, 200, 3) and lib["images"]["lowres"].shape == (75, 100, 3)
    assert lib["scalefactors"]["spot_diameter_fullres"] == 30.0
    assert back.uns["eca"]["target_transform"] == "egn" and back.uns["eca"]["metrics"]["pcc_m"] == 0.5
    import scanpy as sc

    ax = sc.pl.spatial(back, color="G0", library_id="slideA", show=False)
    assert ax is not None
    genes = top_genes(back, 2)
    png = plot_gene_maps(back, genes, tmp_path / "maps.png")
    assert Image.open(png).size[0] > 400  # two panels: predicted | measured


def test_shape_mismatch_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="do not match 3 spots x 2 genes"):
        prediction_anndata(np.zeros((3, 4)), ["a", "b"], ["x", "y", "z"], np.zeros((3, 2)), "L")
    assert not list(tmp_path.iterdir())


def test_top_genes_prefers_best_predicted():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(50, 3))
    pred = np.stack([rng.normal(size=50), truth[:, 1], truth[:, 2] + rng.normal(size=50)], 1)
    a = prediction_anndata(pred, ["noise", "perfect", "ok"], [str(i) for i in range(50)], np.zeros((50, 2)), "L", truth=truth)
    assert top_genes(a, 2) == ["perfect", "ok"]


def test_values_map_back_to_log_counts_with_the_training_statistics(tmp_path):
    """X and layers['measured'] are min-max scaled; var's target_min / target_max and unscale() invert them."""
    from eca_bio.report.export import unscale

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, size=(20, 3)).astype(float)
    logged = np.log10(counts + 1.0)
    lo, hi = logged.min(0) - 0.1, logged.max(0) + 0.2  # the training slides' statistics
    spec = {"transform": "egn", "genes": ["G2", "G0", "G1"], "minimum": list(lo[[2, 0, 1]]), "maximum": list(hi[[2, 0, 1]])}
    scaled = (logged - lo) / (hi - lo)
    adata = prediction_anndata(scaled * 0.9, ["G0", "G1", "G2"], [f"s{i}" for i in range(20)], np.zeros((20, 2)), "L",
                               truth=scaled, spec=spec)
    back = ad.read_h5ad(write_h5ad(adata, tmp_path / "L.h5ad"))
    np.testing.assert_allclose(unscale(back, "measured"), logged, rtol=1e-5, atol=1e-6)  # measured: log10(1 + counts)
    np.testing.assert_allclose(back.var["target_min"].to_numpy(), lo)
    note = back.uns["eca"]["note"]
    assert note.startswith("X = predicted, layers['measured'] = measured: log10(1 + counts) per gene")
    assert "X * (var.target_max - var.target_min) + var.target_min" in note
    plain = prediction_anndata(scaled, ["G0", "G1", "G2"], [f"s{i}" for i in range(20)], np.zeros((20, 2)), "L")
    assert plain.uns["eca"]["note"].startswith("X = predicted (no measured expression)")
    with pytest.raises(ValueError, match="no var\\['target_min'\\]"):
        unscale(plain)
