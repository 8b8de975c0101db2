"""A tiny `eca-msa run` on 2 CPU processes (gloo, DDP) equals the 1-process run, metrics over the exact test set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """name: msa_tiny
stages_module: eca_msa.stages
stages:
  generate: {n_train: 32, n_valid: 16, n_test: 16, text_len: 12, text_dim: 32, audio_len: 20, vision_len: 40, key_frames: 2, seed: 5}
  preprocess: {}
  train: {options: [frozen-text], seeds: [0, 1], epochs: 2, batch_size: 16, progress_bar: false,
          model: {dim: 32, heads: 2, dim_head: 16, mlp_dim: 32, hyper_heads: 2, hyper_dim_head: 16}}
  evaluate: {}
"""


def _run(yaml_path: Path, run_dir: Path, extra: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "eca_msa.cli", "run", str(yaml_path), "--run-dir", str(run_dir),
                          "--accelerator", "cpu", *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_two_processes_equal_one(tmp_path):
    path = tmp_path / "msa.yaml"
    path.write_text(PIPELINE)
    _run(path, tmp_path / "one", [])
    _run(path, tmp_path / "two", ["--devices", "2", "--strategy", "ddp"])
    a = json.loads((tmp_path / "one/train/results.json").read_text())["runs"]
    b = json.loads((tmp_path / "two/train/results.json").read_text())["runs"]
    assert [r["dir"] for r in a] == [r["dir"] for r in b] == [f"{s}/seed{k}" for s in ("almt", "almt_pcc", "almt_eca") for k in (0, 1)]
    for ra, rb in zip(a, b):
        assert ra["best_epoch"] == rb["best_epoch"]
        for key in ("Corr", "MAE", "Has0_acc_2", "Non0_F1_score", "Mult_acc_7"):
            assert rb["test"][key] == pytest.approx(ra["test"][key], abs=1e-4), (ra["dir"], key)
        preds = json.loads((tmp_path / "two/train" / rb["dir"] / "test_predictions.json").read_text())
        assert len(preds["pred"]) == len(preds["id"]) == 16  # the exact test set: no padded duplicates
    assert json.loads((tmp_path / "two/train.done.json").read_text())["world_size"] == 2
    assert (tmp_path / "two/evaluate/report.md").is_file()
