"""The MSA stages and their commands, declared without importing their code (see pipelines/msa_*.yaml).

Each stage's work is named by reference (``"module:function"``) and imported when it runs, so the
pipeline runner and ``eca-msa <command> --help`` only need the configs of :mod:`eca_msa.configs`.
"""

from eca_core.runner.cli import StageCommand, report_paths
from eca_core.runner.pipeline import Stage
from eca_msa.configs import EvaluateConfig, PreprocessConfig, SyntheticConfig, MSATrainConfig

GENERATE = Stage("generate", "eca_msa.synthetic:run_stage", config=SyntheticConfig, main_only=True,
                 description="write a synthetic MMSA pickle shaped like MOSI, MOSEI or CH-SIMS")
PREPROCESS = Stage("preprocess", "eca_msa.preprocess:run_stage", config=PreprocessConfig, inputs="eca_msa.preprocess:stage_inputs",
                   optional=("generate",), main_only=True,
                   description="validate an MMSA pickle (loaded without running code) and cache its tensors")
TRAIN = Stage("train", "eca_msa.train:run_stage", config=MSATrainConfig, needs=("preprocess",),
              description="train ALMT settings × seeds, select epochs on validation, test")
EVALUATE = Stage("evaluate", "eca_msa.evaluate:run_stage", config=EvaluateConfig, needs=("train",), main_only=True,
                 description="mean ± std report and validation curves")

STAGES = {stage.name: stage for stage in (GENERATE, PREPROCESS, TRAIN, EVALUATE)}

GENERATE_COMMAND = StageCommand(GENERATE, out_help="output folder (gets synthetic_mmsa.pkl)", report="eca_msa.synthetic:report")
PREPROCESS_COMMAND = StageCommand(PREPROCESS, out_help="folder for mmsa_cache.pt and summary.json", positional="pkl",
                                  report="eca_msa.preprocess:report")
TRAIN_COMMAND = StageCommand(TRAIN, out_help="output folder (one sub-folder per setting and seed)",
                             needs_help={"preprocess": "folder written by `eca-msa preprocess` (holds mmsa_cache.pt)"},
                             report=report_paths("results"))
EVALUATE_COMMAND = StageCommand(EVALUATE, out_help="report folder",
                                needs_help={"train": "folder written by `eca-msa train` (holds results.json)"},
                                report=report_paths("report", "curves"))
