"""Training: targets from training slides, folds, the vectorised engine and the per-fit reference loop, the validation search."""
