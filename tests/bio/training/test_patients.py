"""Patients: where a slide's patient comes from, folds by patient, exemplars only from other patients."""

import json

import numpy as np
import pytest
from PIL import Image

from eca_bio.features.feature_set import DataError
from eca_bio.model.exemplars import ExemplarBank, ExemplarIndex
from eca_bio.training.folds import grouping_note, plan_folds, resolve_patients
from eca_bio.training.train import train_all
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.training.test_train import tiny_config

HER2ST = ["B4", "C2", "C3", "C4"]


def test_patients_from_the_mapping_the_layout_or_the_pattern():
    assert resolve_patients(HER2ST, {}, "^([A-Z])") == {"B4": "B", "C2": "C", "C3": "C", "C4": "C"}
    assert resolve_patients(HER2ST, {"B4": "donor7"}, "^([A-Z])", {"C2": "hest_C"})["B4"] == "donor7"  # given wins
    assert resolve_patients(HER2ST, {}, "^([A-Z])", {"C2": "hest_C"})["C2"] == "hest_C"  # recorded beats the pattern
    assert resolve_patients(HER2ST, {}, None) is None
    with pytest.raises(DataError, match=r"patient_pattern '\^x' does not match slide 'B4'"):
        resolve_patients(HER2ST, {}, "^x")
    with pytest.raises(DataError, match=r"slide\(s\) \['C3', 'C4'\] have no patient"):
        resolve_patients(HER2ST, {"B4": "B", "C2": "C"}, None)
    with pytest.raises(DataError, match=r"train.patients names slide\(s\) \['Z9'\]"):
        resolve_patients(HER2ST, {"Z9": "Z"}, None)


def test_lopo_and_kfold_by_patient():
    patients = {"A1": "A", "A2": "A", "B1": "B", "B2": "B", "C1": "C"}
    folds = plan_folds(list(patients), "lopo", 0, patients=patients)
    assert [f["test"] for f in folds] == [["A1", "A2"], ["B1", "B2"], ["C1"]]
    for f in folds:
        assert not set(f["patients"]["test"]) & set(f["patients"]["train"]) and f["val"] in f["train"]
    kf = plan_folds(list(patients), "kfold", 2, patients=patients)
    assert [f["test"] for f in kf] == [["A1", "A2", "C1"], ["B1", "B2"]]  # patients A, C | B: never split
    with pytest.raises(DataError, match="cv lopo .* needs each slide's patient"):
        plan_folds(list(patients), "lopo", 0)
    her2st = resolve_patients(HER2ST, {}, "^([A-Z])")
    with pytest.raises(DataError, match=r"fold 1 \(test \['C2', 'C3', 'C4'\]\) has 1 training slide.*cv fixed"):
        plan_folds(HER2ST, "lopo", 0, patients=her2st)  # patient B has one section: train on C, test B4 is cv fixed
    loso = plan_folds(HER2ST, "loso", 0, patients=her2st)
    assert loso[1]["patients"] == {"test": ["C"], "train": ["B", "C"]}
    assert "other patients" in grouping_note(her2st, "loso") and "cv loso" in grouping_note(her2st, "loso")
    assert grouping_note(None, "loso").startswith("no patient ids: sections of one patient may")


def test_exemplars_skip_every_slide_of_the_querys_patient():
    rng = np.random.default_rng(0)
    sids = np.repeat(["C2", "C3", "B4"], 5)
    bank = ExemplarBank(rng.normal(size=(15, 4)), rng.normal(size=(15, 2)), sids, ["g1", "g2"])
    by_slide = ExemplarIndex(bank, k=3).query(bank.embeddings[:5], "C2")[0]
    assert set(bank.slide_ids[by_slide].ravel()) <= {"C3", "B4"} and "C3" in set(bank.slide_ids[by_slide].ravel())
    by_patient = ExemplarIndex(bank, k=3, groups={"C2": "C", "C3": "C", "B4": "B"}).query(bank.embeddings[:5], "C2")[0]
    assert set(bank.slide_ids[by_patient].ravel()) == {"B4"}
    with pytest.raises(ValueError, match="only 5 exemplar spots outside patient 'C'; need k=6"):
        ExemplarIndex(bank, k=6, groups={"C2": "C", "C3": "C", "B4": "B"}).query(bank.embeddings[:5], "C2")


def test_train_by_patient_records_the_grouping(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=4, n_spots=16, n_genes=12)  # slides S0..S3
    patients = {"S0": "P", "S1": "P", "S2": "Q", "S3": "Q"}
    train_all(tiny_config(cv="lopo", patients=patients, final_method=None, methods=["eca"]), pre, tmp_path / "lopo", progress=False)
    plan = json.loads((tmp_path / "lopo" / "folds.json").read_text())
    assert [f["test"] for f in plan["folds"]] == [["S0", "S1"], ["S2", "S3"]] and plan["patients"] == patients
    assert plan["grouping"].startswith("patients {'P': ['S0', 'S1'], 'Q': ['S2', 'S3']}")
    result = json.loads((tmp_path / "lopo" / "egn" / "fold_0" / "eca" / "seed_0" / "result.json").read_text())
    assert result["exemplars_from"] == "other slides"  # one training patient: its other slides are the only source
    train_all(tiny_config(patients=patients, final_method=None, methods=["eca"]), pre, tmp_path / "loso", progress=False)
    result = json.loads((tmp_path / "loso" / "egn" / "fold_0" / "eca" / "seed_0" / "result.json").read_text())
    assert result["test"] == ["S0"] and result["exemplars_from"] == "other patients"  # S1 (patient P) never an exemplar
    plan = json.loads((tmp_path / "loso" / "folds.json").read_text())
    assert plan["folds"][0]["patients"] == {"test": ["P"], "train": ["P", "Q"]} and "cv loso" in plan["grouping"]


def test_a_fold_with_one_image_on_both_sides_is_refused(tmp_path):
    """EGN's 10xProteomic folds pair folders holding one slide image; here two section names for one image."""
    from eca_bio.features.preprocess import run_preprocess
    from tests.bio.conftest import make_legacy_st
    from tests.bio.features.test_preprocess import CPU, cfg_for

    st = tmp_path / "st"
    make_legacy_st(st / "A1", section="A1", seed=1)
    make_legacy_st(st / "A2", section="A2", seed=2)
    make_legacy_st(st / "A3", section="A3", seed=3)
    make_legacy_st(st / "B1", section="B1", seed=3)  # A3's image again ...
    image = st / "B1" / "HE_B1.jpg"
    Image.open(image).save(image, quality=60)  # ... re-encoded: other bytes, the same picture
    run_preprocess(cfg_for(st_dir=str(st), token_grid=1), tmp_path / "pre", CPU, progress=False)
    cfg = tiny_config(n_genes=6, final_method=None, methods=["ridge"])
    with pytest.raises(DataError, match=r"fold 2: test slide A3 and training slide B1 hold one image \(thumbnails \d+ of 256 "
                                        r"bits apart\) \(and 1 more pair\(s\)\); a test on it measures memory"):
        train_all(cfg, tmp_path / "pre", tmp_path / "train", progress=False)
    assert not (tmp_path / "train").exists()
    train_all(tiny_config(n_genes=6, final_method=None, methods=["ridge"], allow_same_image=True), tmp_path / "pre",
              tmp_path / "train", progress=False)
    plan = json.loads((tmp_path / "train" / "folds.json").read_text())
    assert [(p["test"], p["train"]) for p in plan["same_image"]] == [("A3", "B1"), ("B1", "A3")]
    assert "WARNING: fold 2: test slide A3" in plan["grouping"]
