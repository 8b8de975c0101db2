"""``eca-bio demo``: synthetic legacy-ST data the real reader accepts, and the whole pipeline on a small version."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np

from eca_bio.cli import main as cli_main
from eca_bio.demo import make_demo_data
from eca_bio.inputs.st import read_legacy_st


def test_demo_data_is_legacy_st_with_image_dependent_counts(tmp_path):
    data = make_demo_data(tmp_path / "data", n_slides=2, grid=6, n_genes=20, seed=1)
    adata = read_legacy_st(data["st_dir"] / "SYN1")
    assert adata.n_obs == 36 and adata.n_vars == 20
    assert abs(adata.uns["st"]["array_mpp"] - 2.0) < 0.01  # 200 um array spacing / 100 px
    x = np.asarray(adata.X.todense())
    assert (x.sum(1) > 0).all() and x.std(0).min() > 0
    assert data["new_slide"].is_file()


def test_demo_runs_the_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli_main(["demo", "--run-dir", str(out), "--slides", "3", "--grid", "6",
                     "--set", "train.methods=[ridge, eca]", "--set", "train.transforms=[egn]",
                     "--set", "train.epochs=2", "--set", "train.n_genes=20", "--num-workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and str((out / "evaluate" / "report.md").resolve()) in printed
    for stage in ("preprocess", "train", "evaluate", "predict"):
        assert (out / f"{stage}.done.json").is_file()
    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    assert set(summary["results"]["egn"]) == {"ridge", "eca"}
    assert summary["results"]["egn"]["ridge"]["overall"]["pcc_m"] > 0.1  # image content predicts expression
    pred = ad.read_h5ad(out / "predict" / "SYN_new.h5ad")
    assert pred.n_obs > 20 and pred.n_vars == 20
    assert sorted(p.name for p in (out / "evaluate" / "h5ad" / "egn").glob("*.h5ad")) == ["SYN1.h5ad", "SYN2.h5ad", "SYN3.h5ad"]


def test_demo_data_are_byte_identical_on_a_rerun(tmp_path):
    """The demo paints its data again on every run; the same bytes keep every stage up to date."""
    from eca_core.runner.resume import content_hash

    make_demo_data(tmp_path / "a", n_slides=3, grid=5, seed=0)
    make_demo_data(tmp_path / "b", n_slides=3, grid=5, seed=0)
    assert content_hash(tmp_path / "a") == content_hash(tmp_path / "b")


def test_homogeneity_makes_a_spots_tokens_alike_against_the_spread_across_spots(tmp_path):
    """The knob's promise on the painted pixels: the 2 x 2 quadrant means of each 112 um spot patch (the demo's token
    grid) scatter less, relative to the spread of spot means, at homogeneity 1 than at 0."""
    from PIL import Image

    def ratio(h):
        data = make_demo_data(tmp_path / f"h{h}", n_slides=1, grid=6, n_genes=10, seed=3, homogeneity=h)
        img = np.asarray(Image.open(data["st_dir"] / "SYN1" / "SYN1_HE.png"), dtype=np.float64)
        adata = read_legacy_st(data["st_dir"] / "SYN1")
        half = 14  # 56 um at 2 um/px: a quadrant of the 112 um patch
        quads, means = [], []
        for x, y in np.asarray(adata.obsm["spatial"]).round().astype(int):
            q = np.stack([img[y + dy:y + dy + half, x + dx:x + dx + half].reshape(-1, 3).mean(0)
                          for dy in (-half, 0) for dx in (-half, 0)])
            quads.append(np.sqrt(((q - q.mean(0)) ** 2).sum(1).mean()))
            means.append(q.mean(0))
        cross = np.sqrt(((np.array(means) - np.mean(means, 0)) ** 2).sum(1).mean())
        return np.sqrt(np.mean(np.square(quads))) / cross

    homogeneous, scattered = ratio(1.0), ratio(0.0)  # 0.19 and 0.78 here
    assert homogeneous < 0.5 * scattered, (homogeneous, scattered)
