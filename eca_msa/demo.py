"""``eca-msa demo``: a synthetic MOSI-shaped pickle, then generate → preprocess → train → evaluate.

All three settings side by side over several seeds, (i) being the published ALMT (preset
``almt-mosi``; its text from the precomputed features unless ``--text-model`` names a BERT); the demo scale (fewer clips, shorter audio
and video sequences than MOSI's 375/500) keeps it to a few minutes on two CPU cores. The same
pipeline at full scale is ``pipelines/msa_demo.yaml``; real data is ``pipelines/msa_mosi.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eca_core.runner import distributed
from eca_core.runner.runtime import Runtime
from eca_core.runner.pipeline import PipelineSpec, run_pipeline

DEMO_DATA = dict(n_train=256, n_valid=96, n_test=192, audio_len=60, vision_len=120, key_frames=3, seed=0)
# The published MOSI ALMT (preset almt-mosi) at demo scale; text from the precomputed features unless --text-model is given.
DEMO_TRAIN = dict(preset="almt-mosi", epochs=16, batch_size=16, patience=4, progress_bar=False)


def demo_spec(run_dir: Path, seeds: list[int], epochs: int, n_train: int, threads: int,
              text_model: str | None = None) -> PipelineSpec:
    """The demo pipeline (same stages as pipelines/msa_demo.yaml, at demo scale)."""
    data = DEMO_DATA | {"n_train": n_train}
    train = DEMO_TRAIN | {"epochs": epochs, "seeds": seeds, "threads": threads}
    train |= {"model": {"text_model": text_model}} if text_model else {"options": ["frozen-text"]}
    return PipelineSpec.from_dict({
        "name": "msa_demo_quick",
        "stages_module": "eca_msa.stages",
        "run_dir": str(run_dir),
        "stages": {"generate": data, "preprocess": {}, "train": train, "evaluate": {}},
    })


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, default=Path("runs/msa_demo_quick"), help="where the demo writes its stages")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per setting")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAIN["epochs"], help="maximum epochs per run")
    parser.add_argument("--n-train", type=int, default=DEMO_DATA["n_train"], help="training clips to generate")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--text-model", default=None, metavar="BERT",
                        help="fine-tune this BERT (local folder or hub name) on the text ids, as published ALMT does "
                             "(default: option frozen-text, the precomputed text features)")
    Runtime.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    spec = demo_spec(args.run_dir, args.seeds, args.epochs, args.n_train, args.threads, args.text_model)
    records: dict[str, Any] = run_pipeline(spec, runtime=Runtime.from_args(args))
    if not distributed.is_main():
        return 0
    report = Path(args.run_dir) / "evaluate" / "report.md"
    print(report.read_text())
    print(f"report: {report.resolve()}")
    print(f"curves: {report.with_name('curves.png').resolve()}")
    return 0 if "evaluate" in records else 1
