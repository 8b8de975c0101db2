"""``eca-msa``: the multimodal sentiment analysis pipeline's commands."""

from __future__ import annotations

import sys
from typing import Sequence

from eca_core.runner.cli import lazy_cli

COMMANDS = {
    "preprocess": ("eca_msa.stages:PREPROCESS_COMMAND", "validate an MMSA feature pickle (MOSI/MOSEI/CH-SIMS) and cache its tensors"),
    "train": ("eca_msa.stages:TRAIN_COMMAND", "train ALMT settings (MSE | +PCC | +ECA+DNPL) over seeds, select epochs on validation"),
    "evaluate": ("eca_msa.stages:EVALUATE_COMMAND", "mean ± std report (markdown, JSON) and validation curves (PNG) of a training folder"),
    "synthetic": ("eca_msa.stages:GENERATE_COMMAND", "write a synthetic MMSA pickle shaped like MOSI, MOSEI or CH-SIMS"),
    "demo": ("eca_msa.demo", "generate a synthetic MOSI-shaped pickle and run the whole pipeline on it"),
    "run": ("eca_core.runner.cli:RUN_COMMAND", "run a pipeline YAML from pipelines/"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return lazy_cli("eca-msa", "Multimodal sentiment analysis with ALMT and Extrapolative Correlation Attention.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
