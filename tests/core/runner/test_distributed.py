"""Two CPU processes (gloo) through the real runner: rank 0 alone writes, a failing rank stops every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eca_core.runner.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def _pipeline(tmp_path: Path, fail_rank: int = -1, kill_rank: int = -1) -> Path:
    (tmp_path / "input.txt").write_text("21")
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nstages_module: tests.core.stage_fixtures\nrun_dir: run\nstages:\n"
                    f"  make: {{input: {tmp_path / 'input.txt'}, fail_rank: {fail_rank}, kill_rank: {kill_rank}}}\n  scale: {{}}\n")
    return path


def test_two_ranks_run_every_stage_and_rank_0_writes_the_markers(tmp_path):
    out = _cli(["run", str(_pipeline(tmp_path)), *DDP], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[t] make: running on 2 processes") == 1  # rank 1 prints nothing
    marker = json.loads((tmp_path / "run/make.done.json").read_text())
    assert marker["world_size"] == 2 and (tmp_path / "run/scale/scaled.txt").read_text() == "63 0.001"
    again = _cli(["run", str(_pipeline(tmp_path))], tmp_path)  # resumed with another world size: up to date
    assert again.returncode == 0 and again.stdout.count("up to date") == 2


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path):
    out = _cli(["run", str(_pipeline(tmp_path, fail_rank=1)), *DDP], tmp_path)
    assert out.returncode == 2
    assert "eca run: error: rank 1 failed: ValueError: rank 1 cannot read its shard" in out.stderr
    assert not (tmp_path / "run/make.done.json").exists() and not (tmp_path / "run/.eca.lock").exists()


def test_a_killed_rank_is_named_when_every_rank_is_stopped(tmp_path):
    """SIGKILL of rank 1: Lightning's launcher stops every process; the user is told which rank died and how."""
    out = _cli(["run", str(_pipeline(tmp_path, kill_rank=1)), *DDP], tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "finished work is kept" in line]
    assert lines, out.stderr[-2000:]
    assert ("rank 1 (pid" in lines[0] and "ended with code -9" in lines[0]) or \
        lines[0].startswith("eca run: error: another rank stopped without a word (killed, or out of memory?)"), lines
