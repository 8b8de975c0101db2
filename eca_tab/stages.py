"""The tabular stages and their commands, declared without importing their code (see pipelines/tab_*.yaml).

Each stage's work is named by reference (``"module:function"``) and imported when it runs, so the
pipeline runner and ``eca-tab <command> --help`` only need the configs of :mod:`eca_tab.configs`.
"""

from eca_core.runner.cli import StageCommand, report_paths
from eca_core.runner.pipeline import Stage
from eca_tab.configs import PreprocessConfig, TabEvaluateConfig, TabTrainConfig

PREPROCESS = Stage("preprocess", "eca_tab.preprocess:run_stage", config=PreprocessConfig, inputs="eca_tab.preprocess:stage_inputs",
                   main_only=True, description="CSV -> seeded split, scaled numeric features, categorical codes")
TRAIN = Stage("train", "eca_tab.train:run_stage", config=TabTrainConfig, needs=("preprocess",),
              description="FT-Transformer and its ECA variants × seeds, early stopping on validation MSE")
EVALUATE = Stage("evaluate", "eca_tab.evaluate:run_stage", config=TabEvaluateConfig, needs=("train",), main_only=True,
                 description="MAE / MSE / PCC ± std, paired tests, PCC-plateau curves")

STAGES = {stage.name: stage for stage in (PREPROCESS, TRAIN, EVALUATE)}

PREPROCESS_COMMAND = StageCommand(PREPROCESS, out_help="folder for prepared.npz and schema.json", positional="csv",
                                  report="eca_tab.preprocess:report")
TRAIN_COMMAND = StageCommand(TRAIN, out_help="output folder (one sub-folder per method and seed)",
                             needs_help={"preprocess": "folder written by `eca-tab preprocess` (holds prepared.npz)"},
                             report=report_paths("results"))
EVALUATE_COMMAND = StageCommand(EVALUATE, out_help="report folder",
                                needs_help={"train": "folder written by `eca-tab train` (holds results.json)"},
                                report=report_paths("report", "curves"))
