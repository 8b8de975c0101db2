"""HER2+ ST (4 sections), leave-one-section-out: every method under both target transforms, one report.

    OMP_NUM_THREADS=1 python benchmarks/bio_her2st.py            # = eca-bio run pipelines/bio_her2st.yaml
    HER2ST=/path/to/her2st RUN_DIR=runs/my_her2st python benchmarks/bio_her2st.py

Runs (or resumes; finished stages and folds are skipped) the pipeline, then prints the side-by-side
tables and the two claims checked on them: ECA beats ridge on the same features; ECA >= softmax on
PCC@M with MSE <= 1.02x. The encoder is whatever pipelines/bio_her2st.yaml names (a random-init timm
ViT-S/14 by default, since no pathology weights can be downloaded in the reference environment).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eca_core.pipeline import PipelineSpec, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    spec = PipelineSpec.from_yaml(ROOT / "pipelines" / "bio_her2st.yaml").with_overrides(sys.argv[1:])
    start = time.time()
    run_pipeline(spec, log=lambda m: print(m, flush=True))
    report = spec.run_dir / "evaluate" / "report.md"
    print(report.read_text())
    summary = json.loads((spec.run_dir / "evaluate" / "summary.json").read_text())
    for transform, checks in summary["claims"].items():
        for name, c in checks.items():
            print(f"{transform:8s} {name:16s} holds={c['holds']}")
    print(f"total {time.time() - start:.0f}s; report {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
