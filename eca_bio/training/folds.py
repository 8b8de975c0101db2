"""Slide-level fold plans: which slides test, train and early-stop each fold."""

from __future__ import annotations

from typing import Any

from eca_bio.features.feature_set import DataError


def plan_folds(slide_ids: list[str], cv: str, n_folds: int, test_slides: list[str] | None = None) -> list[dict[str, Any]]:
    """Slide-level folds: test slides, training slides and the training slide used for early stopping."""
    ids = sorted(slide_ids)
    if cv == "none":
        return []
    if cv == "fixed":
        missing = sorted(set(test_slides or []) - set(ids))
        if missing or not test_slides:
            raise DataError(f"cv fixed: test slide(s) {missing or '(none given)'} are not among the ST slides {ids}")
        groups = [sorted(test_slides)]
    elif cv == "loso":
        groups = [[s] for s in ids]
    elif cv == "kfold":
        if n_folds < 2 or n_folds > len(ids):
            raise DataError(f"k-fold by slide needs 2 <= n_folds <= {len(ids)} slides, got n_folds={n_folds}")
        groups = [ids[i::n_folds] for i in range(n_folds)]
    else:
        raise ValueError(f"unknown cv {cv!r}; choose loso, kfold, fixed or none")
    folds = []
    for i, test in enumerate(groups):
        train = [s for s in ids if s not in test]
        if len(train) < 2:
            raise DataError(f"fold {i} (test {test}) has {len(train)} training slide(s); slide-level CV needs at least 2 "
                            f"(one is held out for early stopping and exemplars must come from another slide). "
                            f"Found {len(ids)} ST slides: {ids}")
        folds.append({"fold": i, "test": test, "train": train, "val": train[i % len(train)]})
    return folds
