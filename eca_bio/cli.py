"""``eca-bio``: the slide-to-expression pipeline's commands."""

from __future__ import annotations

import sys
from typing import Sequence

from eca_core.runner.cli import lazy_cli

COMMANDS = {
    "preprocess": ("eca_bio.stages:PREPROCESS_COMMAND", "tile slides (+ ST spots), embed patches with a frozen timm encoder, write per-slide HDF5"),
    "train": ("eca_bio.stages:TRAIN_COMMAND", "train expression models with slide-level cross-validation"),
    "evaluate": ("eca_bio.stages:EVALUATE_COMMAND", "PCC@F/S/M, MSE, MAE report, per-gene CSV, curves, .h5ad export"),
    "predict": ("eca_bio.stages:PREDICT_COMMAND", "predict expression on new whole-slide images without sequencing"),
    "diagnose": ("eca_bio.report.diagnose", "homogeneity of a preprocess folder's token sets against their expression targets (Theorem 2.2)"),
    "demo": ("eca_bio.demo", "build a small synthetic ST slide set and run the whole pipeline on it"),
    "run": ("eca_core.runner.cli:RUN_COMMAND", "run a pipeline YAML from pipelines/"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return lazy_cli("eca-bio", "Predict spatial gene expression from H&E slides with Extrapolative Correlation Attention.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
