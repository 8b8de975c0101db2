"""The paper's UCI table on the real Appliances data: FT-Transformer vs + ECA and its ablations, both splits.

    python benchmarks/tab_appliances.py                       # pipelines/tab_appliances_cpu.yaml, 2 CPU ranks
    python benchmarks/tab_appliances.py --pipeline pipelines/tab_appliances.yaml --accelerator gpu --devices 1

Runs (or resumes: finished fits are skipped) the pipeline through ``eca-tab run`` with the given runtime
options, then prints each evaluate entry's table (beside the paper's row), the per-epoch cost of each
variant relative to the FT-Transformer, the paired-test verdicts against it, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "tab_appliances_cpu.yaml")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", default="2")
    parser.add_argument("--strategy", default="ddp")
    args = parser.parse_args()
    from eca_core.runner.pipeline import PipelineSpec

    spec = PipelineSpec.from_yaml(args.pipeline)
    run_dir = args.run_dir or spec.run_dir
    cmd = [sys.executable, "-m", "eca_tab.cli", "run", str(args.pipeline), "--run-dir", str(run_dir),
           "--accelerator", args.accelerator, "--devices", str(args.devices)]
    if str(args.devices) not in ("1", "auto"):
        cmd += ["--strategy", args.strategy]
    start = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    wall = time.time() - start
    for entry in [n for n in spec.stages if spec.use(n) == "evaluate"]:
        report = json.loads((run_dir / entry / "report.json").read_text())
        split = report["data"]["split"]
        print(f"\n## {entry}: {split['how']} split\n\n{report['table_markdown']}\n")
        print("per-epoch cost vs FT-Transformer: " + ", ".join(f"{m} {r:.2f}x" for m, r in report["epoch_cost_ratio"].items()))
        for method, tests in report["paired_tests"].items():
            for metric, t in tests.items():
                print(f"{method:8s} {metric.upper():4s} {t['verdict']}")
    print(f"\nwall time {wall:.0f}s (finished fits are reused on a re-run); run dir {Path(run_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
