"""``eca-tab``: the tabular regression pipeline's commands (FT-Transformer with ECA on CSV / UCI data)."""

from __future__ import annotations

import sys
from typing import Sequence

from eca_core.runner.cli import lazy_cli

COMMANDS = {
    "preprocess": ("eca_tab.stages:PREPROCESS_COMMAND", "CSV with a numeric target -> seeded split, scaled features (UCI presets)"),
    "train": ("eca_tab.stages:TRAIN_COMMAND", "FT-Transformer and its ECA variants × seeds, early stopping on validation"),
    "evaluate": ("eca_tab.stages:EVALUATE_COMMAND", "MAE / MSE / PCC ± std over seeds, paired tests, PCC-plateau curves (PNG)"),
    "run": ("eca_core.runner.cli:RUN_COMMAND", "run a pipeline YAML from pipelines/ (tab_appliances.yaml, ...)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return lazy_cli("eca-tab", "Tabular regression with the FT-Transformer and Extrapolative Correlation Attention.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
