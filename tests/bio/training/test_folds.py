"""Slide-level fold plans: test, training and early-stopping slides of each fold, and the plans that cannot work."""

import pytest

from eca_bio.features.feature_set import DataError
from eca_bio.training.folds import plan_folds


def test_fold_plans():
    folds = plan_folds(["C", "A", "B"], "loso", 0)
    assert [f["test"] for f in folds] == [["A"], ["B"], ["C"]]
    for f in folds:
        assert f["val"] in f["train"] and not set(f["test"]) & set(f["train"])
    kf = plan_folds(["A", "B", "C", "D"], "kfold", 2)
    assert [f["test"] for f in kf] == [["A", "C"], ["B", "D"]]
    with pytest.raises(DataError, match="fold 0 .* has 1 training slide"):
        plan_folds(["A", "B"], "loso", 0)
    with pytest.raises(DataError, match="n_folds"):
        plan_folds(["A", "B", "C"], "kfold", 5)


def test_fixed_and_none():
    assert plan_folds(["A", "B", "C", "D"], "fixed", 0, ["D", "B"]) == [{"fold": 0, "test": ["B", "D"], "train": ["A", "C"], "val": "A"}]
    assert plan_folds(["A", "B"], "none", 0) == []
    with pytest.raises(DataError, match=r"cv fixed: test slide\(s\) \['X'\] are not among the ST slides"):
        plan_folds(["A", "B", "C"], "fixed", 0, ["X"])
    with pytest.raises(ValueError, match="unknown cv 'lopso'"):
        plan_folds(["A", "B", "C"], "lopso", 0)
