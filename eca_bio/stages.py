"""The bio stages and their commands, declared without importing their code (see pipelines/bio_*.yaml).

Each stage's work is named by reference (``"module:function"``) and imported when it runs, so the
pipeline runner and ``eca-bio <command> --help`` only need the configs of :mod:`eca_bio.configs`.
"""

from eca_core.runner.cli import StageCommand
from eca_core.runner.pipeline import Stage
from eca_bio.configs import EvaluateConfig, PredictConfig, PreprocessConfig, BioTrainConfig

PREPROCESS = Stage("preprocess", run="eca_bio.features.preprocess:run_stage", config=PreprocessConfig, inputs="eca_bio.features.preprocess:stage_inputs",
                   description="tile slides (+ ST spots), embed patches with a frozen timm encoder, write per-slide HDF5")
TRAIN = Stage("train", "eca_bio.training.train:run_stage", config=BioTrainConfig, needs=("preprocess",),
              description="slide-level CV of ridge, mean-pool, softmax and ECA expression models")
EVALUATE = Stage("evaluate", "eca_bio.report.evaluate:run_stage", config=EvaluateConfig, needs=("train",), optional=("preprocess",),
                 main_only=True, description="PCC@F/S/M, MSE, MAE per fold and overall; per-gene CSV; curves; .h5ad")
PREDICT = Stage("predict", "eca_bio.predict:run_stage", config=PredictConfig, inputs="eca_bio.predict:stage_inputs", needs=("train",),
                description="expression maps for new WSIs without sequencing")

STAGES = {stage.name: stage for stage in (PREPROCESS, TRAIN, EVALUATE, PREDICT)}

PREPROCESS_COMMAND = StageCommand(PREPROCESS, out_help="output folder (manifest.json, slides/)", report="eca_bio.features.preprocess:report")
TRAIN_COMMAND = StageCommand(TRAIN, out_help="output folder for models, histories and predictions",
                             needs_help={"preprocess": "output folder of `eca-bio preprocess` (has manifest.json)"},
                             report="eca_bio.training.train:report")
EVALUATE_COMMAND = StageCommand(EVALUATE, out_help="report folder (replaced atomically)",
                                needs_help={"train": "output folder of `eca-bio train`",
                                            "preprocess": "preprocess folder (slide images for the .h5ad export)"},
                                report="eca_bio.report.evaluate:report")
PREDICT_COMMAND = StageCommand(PREDICT, out_help="output folder for .h5ad and PNG files", needs_flags={"train": "--model"},
                               needs_help={"train": "pipeline run dir (with train/final), a train output folder, or a trained model folder"},
                               report="eca_bio.predict:report")
