"""A tiny `eca-tab run` on 2 CPU processes (gloo, DDP) equals the 1-process run; `eca-tab --help` and a bad flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.tab.conftest import ROOT, write_table

pytest.importorskip("rtdl_revisiting_models")
PIPELINE = """name: tab_tiny
stages_module: eca_tab.stages
stages:
  preprocess: {{csv: {csv}, target: y}}
  train: {{methods: [softmax, eca], seeds: [0, 1], epochs: 3, batch_size: 32, progress_bar: false,
          model: {{n_blocks: 1, d_block: 16, attention_n_heads: 2}}}}
  evaluate: {{}}
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eca_tab.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_two_processes_equal_one(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text(PIPELINE.format(csv=write_table(tmp_path / "t.csv")))
    for name, extra in (("one", []), ("two", ["--devices", "2", "--strategy", "ddp"])):
        out = _run(["run", str(path), "--run-dir", str(tmp_path / name), "--accelerator", "cpu", *extra])
        assert out.returncode == 0, out.stderr[-3000:]
    a = json.loads((tmp_path / "one/train/results.json").read_text())["fits"]
    b = json.loads((tmp_path / "two/train/results.json").read_text())["fits"]
    assert [f["dir"] for f in a] == [f["dir"] for f in b] == ["softmax/seed0", "softmax/seed1", "eca/seed0", "eca/seed1"]
    for fa, fb in zip(a, b):
        assert fa["best_epoch"] == fb["best_epoch"], fa["dir"]
        for key in ("mae", "mse", "pcc"):
            assert fb["test"][key] == pytest.approx(fa["test"][key], rel=1e-4, abs=1e-5), (fa["dir"], key)
    assert json.loads((tmp_path / "two/train.done.json").read_text())["world_size"] == 2
    assert (tmp_path / "two/evaluate/report.md").is_file() and (tmp_path / "two/evaluate/curves.png").is_file()


def test_help_and_a_bad_flag():
    out = _run(["--help"])
    assert out.returncode == 0 and "preprocess" in out.stdout and "evaluate" in out.stdout
    out = _run(["train", "--help"])
    assert out.returncode == 0 and "--model.d-block" in out.stdout and "--methods" in out.stdout
    out = _run(["train", "--preprocess", ".", "--out", "x", "--model.d-blok", "8"])
    assert out.returncode == 2 and "unrecognized arguments: --model.d-blok" in out.stderr
