"""Train on one cohort, test the final model on new labeled sections; cv: fixed and cv: none."""

from __future__ import annotations

import json

import anndata as ad
import pytest

from eca_bio.model.expression import ModelConfig
from eca_bio.predict import PredictConfig, predict_slides
from eca_bio.features.preprocess import run_preprocess
from eca_bio.features.feature_set import DataError
from eca_bio.training.train import BioTrainConfig, train_all

from .conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


def test_fixed_cv_needs_its_test_slides():  # the fold plans themselves: tests/bio/training/test_folds.py
    with pytest.raises(ValueError, match="test_slides names the test slides of cv: fixed"):
        BioTrainConfig(cv="fixed")


def test_external_test_on_new_labeled_sections(tmp_path):
    for k in range(4):
        make_legacy_st(tmp_path / ("cohort_a" if k < 2 else "cohort_b") / f"S{k}", section=f"S{k}", n=5, origin=150.0 + 7 * k,
                       seed=1 + k)
    run_preprocess(cfg_for(st_dir=str(tmp_path / "cohort_a")), tmp_path / "pre", CPU, progress=False)
    cfg = BioTrainConfig(methods=["ridge"], transforms=["egn"], cv="none", n_genes=6, k=2, epochs=1, patience=1, min_epochs=1,
                      batch_size=8, model=ModelConfig(hidden=8, heads=2), final_method="eca", threads=1)
    train_all(cfg, tmp_path / "pre", tmp_path / "train", CPU, progress=False)
    result = predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_b"), export_images=False),
                            tmp_path / "test", CPU, progress=False)
    assert set(result["slides"]) == {"S2", "S3"} and result["report"].endswith("external_test.md")
    report = json.loads((tmp_path / "test" / "external_test.json").read_text())
    assert set(report["sections"]) == {"S2", "S3"} and report["pooled"]["n_samples"] == 50
    for sid, scores in report["sections"].items():
        adata = ad.read_h5ad(tmp_path / "test" / f"{sid}.h5ad")
        assert adata.shape == (25, 6) and "measured" in adata.layers and list(adata.obs_names)[:2] == ["1x1", "1x2"]
        assert adata.uns["spatial"][sid]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(50.0)  # 100 um at 2 um/px
        assert "target_min" in adata.var and adata.uns["eca"]["note"].startswith("X = predicted, layers['measured'] = measured")
        from eca_core.metrics import regression_report

        again = regression_report(adata.X, adata.layers["measured"], list(adata.var_names))
        assert again["pcc_m"] == pytest.approx(scores["pcc_m"], abs=1e-5)
    md = (tmp_path / "test" / "external_test.md").read_text()
    assert "| pooled | 50 |" in md and "never seen in training" in md
    assert (tmp_path / "test" / "external_per_gene.csv").read_text().count("\n") == 1 + 2 * 6
    with pytest.raises(DataError, match="S0 was a training slide"):
        predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_a"), export_images=False),
                       tmp_path / "test2", CPU, progress=False)


def test_a_training_section_under_another_name_is_refused_before_embedding(tmp_path):
    import shutil

    for k in range(2):
        make_legacy_st(tmp_path / "cohort_a" / f"S{k}", section=f"S{k}", n=5, origin=150.0 + 7 * k, seed=1 + k)
    run_preprocess(cfg_for(st_dir=str(tmp_path / "cohort_a")), tmp_path / "pre", CPU, progress=False)
    cfg = BioTrainConfig(methods=["ridge"], transforms=["egn"], cv="none", n_genes=6, k=2, epochs=1, patience=1, min_epochs=1,
                      batch_size=8, model=ModelConfig(hidden=8, heads=2), final_method="ridge", threads=1)
    train_all(cfg, tmp_path / "pre", tmp_path / "train", CPU, progress=False)
    src, dst = tmp_path / "cohort_a" / "S1", tmp_path / "cohort_c" / "R9"  # S1 renamed R9, as a user might copy it
    dst.mkdir(parents=True)
    shutil.copy(src / "S1.tsv.gz", dst / "R9.tsv.gz")
    shutil.copy(src / "S1_selection.tsv", dst / "R9_selection.tsv")
    shutil.copy(src / "HE_S1.jpg", dst / "HE_R9.jpg")
    with pytest.raises(DataError, match=r"section R9: its image has the same content as the image of training slide S1"):
        predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_c"), export_images=False),
                       tmp_path / "test", CPU, progress=False)
    assert not list((tmp_path / "test").rglob("*.h5"))  # refused before anything was embedded


def test_a_section_with_none_of_the_models_genes_is_named(tmp_path):
    import gzip

    for k in range(3):
        make_legacy_st(tmp_path / ("cohort_a" if k < 2 else "cohort_b") / f"S{k}", section=f"S{k}", n=5, origin=150.0 + 7 * k,
                       seed=1 + k)
    counts = tmp_path / "cohort_b" / "S2" / "S2.tsv.gz"  # another panel: no gene in common
    with gzip.open(counts, "rt") as fh:
        text = fh.read()
    with gzip.open(counts, "wt") as fh:
        fh.write(text.replace("GENE", "MOUSE"))
    run_preprocess(cfg_for(st_dir=str(tmp_path / "cohort_a")), tmp_path / "pre", CPU, progress=False)
    cfg = BioTrainConfig(methods=["ridge"], transforms=["egn"], cv="none", n_genes=6, k=2, epochs=1, patience=1, min_epochs=1,
                      batch_size=8, model=ModelConfig(hidden=8, heads=2), final_method="ridge", threads=1)
    train_all(cfg, tmp_path / "pre", tmp_path / "train", CPU, progress=False)
    with pytest.raises(DataError, match=r"section S2: none of the model's 6 genes is measured in slides/S2\.h5ad"):
        predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_b"), export_images=False),
                       tmp_path / "test", CPU, progress=False)


def test_the_content_check_spares_unlabeled_slides(tmp_path):
    """Predicting (no metrics) on a training image given as a plain slide is allowed; only labeled sections are tests."""
    from eca_bio.predict import training_section_check

    check = training_section_check(tmp_path, ["S1"], {"S1": {"image": "abc", "counts": "def"}})
    check("new_slide", {"image": "abc"}, False)  # unlabeled: fine
    with pytest.raises(DataError, match="section R9: its counts has the same content as the counts of training slide S1"):
        check("R9", {"image": "zzz", "counts": "def"}, True)


def test_predict_reads_new_sections_in_their_own_layout_not_the_training_runs(tmp_path):
    for k in range(4):
        make_legacy_st(tmp_path / ("cohort_a" if k < 3 else "cohort_b") / f"S{k}", section=f"S{k}", n=5, origin=150.0 + 7 * k,
                       seed=1 + k)
    run_preprocess(cfg_for(st_dir=str(tmp_path / "cohort_a"), st_format="legacy_st"), tmp_path / "pre", CPU, progress=False)
    cfg = BioTrainConfig(methods=["ridge"], transforms=["egn"], cv="none", n_genes=6, k=2, epochs=1, patience=1, min_epochs=1,
                      batch_size=8, model=ModelConfig(hidden=8, heads=2, use_exemplars=False), final_method="eca", threads=1)
    train_all(cfg, tmp_path / "pre", tmp_path / "train", CPU, progress=False)
    import torch

    saved = torch.load(tmp_path / "train" / "final" / "model.pt", weights_only=True)
    assert saved["hparams"]["model"]["use_exemplars"] is False  # the flag is honoured, not overridden
    assert not any(k.startswith("exemplar_") for k in saved["state_dict"])
    with pytest.raises(Exception, match="not a Visium Space Ranger folder"):  # the st_format asked for, not the run's legacy_st
        predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_b"), st_format="visium", export_images=False),
                       tmp_path / "wrong", CPU, progress=False)
    result = predict_slides(tmp_path / "train", PredictConfig(st_dir=str(tmp_path / "cohort_b"), export_images=False),
                            tmp_path / "test", CPU, progress=False)
    assert set(result["slides"]) == {"S3"}
