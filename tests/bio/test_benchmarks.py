"""The GPU check script keeps working: its dry pass (CPU, tiny sizes) runs every step it would run on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_pass_runs_every_step():
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "gpu_check finished"):
        assert step in out, out[-2000:]
    assert "| demo | 2 |" in out and "| yes |" in out  # the engine's items equal the per-fit loop's
    assert "prediction:" in out  # the demo ran to its predictions
