"""EGN's 10xProteomic layout: six Visium folders in 10x release folders, files named as 10x's downloads; EGN's folds
pair one image in train and test (refused unless allowed), the patient split does not."""

import json

import pytest

from eca_bio.features.feature_set import DataError
from eca_bio.features.preprocess import run_preprocess
from eca_bio.inputs.st import find_sections
from eca_bio.training.train import train_all
from eca_core.runner.config import from_dict
from eca_core.runner.pipeline import PipelineSpec
from tests.bio.conftest import make_visium
from tests.bio.features.test_preprocess import CPU, cfg_for
from tests.bio.training.test_train import tiny_config

# EGN v1/dataset.py's Breast_Cancer list; the image each folder holds (1.1.0 reprocessed 1.0.0; Targeted = Parent's section)
EGN = [("1.0.0", "V1_Breast_Cancer_Block_A_Section_1", 1), ("1.0.0", "V1_Breast_Cancer_Block_A_Section_2", 2),
       ("1.1.0", "V1_Breast_Cancer_Block_A_Section_1", 1), ("1.1.0", "V1_Breast_Cancer_Block_A_Section_2", 2),
       ("1.2.0", "Parent_Visium_Human_BreastCancer", 3), ("1.2.0", "Targeted_Visium_Human_BreastCancer_Immunology", 3)]
IDS = [f"{release}_{name}" for release, name, _ in EGN]


def make_10xgenomics(root):
    for i, (release, name, image) in enumerate(EGN):
        folder = make_visium(root / release / name, seed=10 + i, image_seed=image)
        (folder / "filtered_feature_bc_matrix.h5").rename(folder / f"{name}_filtered_feature_bc_matrix.h5")
        (folder / "tissue_fullres.tif").rename(folder / f"{name}_image.tif")
    return root


@pytest.fixture(scope="module")
def egn_pre(tmp_path_factory):
    root = tmp_path_factory.mktemp("egn")
    make_10xgenomics(root / "10xgenomics")
    run_preprocess(cfg_for(st_dir=str(root / "10xgenomics"), st_format="visium", token_grid=1), root / "pre", CPU, progress=False)
    return root


def test_release_folders_and_prefixed_files_are_read(egn_pre):
    sections = find_sections(egn_pre / "10xgenomics")
    assert [s.section_id for s in sections] == sorted(IDS) and {s.format for s in sections} == {"visium"}
    manifest = json.loads((egn_pre / "pre" / "manifest.json").read_text())
    assert sorted(e["slide_id"] for e in manifest["slides"]) == sorted(IDS)
    assert all(e["n_patches"] == 18 and e["image"].endswith("_image.tif") for e in manifest["slides"])


def test_egn_folds_are_refused_then_reproduced_with_a_warning_and_the_patient_split_is_clean(egn_pre, tmp_path):
    spec = PipelineSpec.from_yaml("pipelines/bio_egn_10xproteomic.yaml")
    folds = spec.stages["train_egn_folds"]["test_folds"]
    assert [[IDS.index(s) for s in fold] for fold in folds] == [[3, 5], [0, 4], [1, 2]]  # KFold(3, shuffle, 12345)
    small = dict(methods=["ridge"], final_method=None, n_genes=8)
    with pytest.raises(DataError, match=r"fold 0: test slide 1\.1\.0_V1_Breast_Cancer_Block_A_Section_2 and training slide "
                                        r"1\.0\.0_V1_Breast_Cancer_Block_A_Section_2 hold one image"):
        train_all(tiny_config(cv="given", test_folds=folds, **small), egn_pre / "pre", tmp_path / "egn", progress=False)
    train_all(tiny_config(cv="given", test_folds=folds, allow_same_image=True, **small), egn_pre / "pre", tmp_path / "egn",
              progress=False)
    plan = json.loads((tmp_path / "egn" / "folds.json").read_text())
    assert {(IDS.index(p["test"]), IDS.index(p["train"])) for p in plan["same_image"]} == {(3, 1), (5, 4), (0, 2), (4, 5), (1, 3), (2, 0)}
    patients = from_dict(type(tiny_config()), {**spec.stages["train_by_patient"], "methods": ["ridge"]}, "x").patients
    train_all(tiny_config(cv="lopo", patients=patients, **small), egn_pre / "pre", tmp_path / "patients", progress=False)
    plan = json.loads((tmp_path / "patients" / "folds.json").read_text())
    assert plan["same_image"] == [] and [len(f["test"]) for f in plan["folds"]] == [4, 2]
