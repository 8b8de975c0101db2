"""HER2+ ST (4 sections), leave-one-section-out: every method under both target transforms, one report.

    OMP_NUM_THREADS=1 python benchmarks/bio_her2st.py            # = eca-bio run pipelines/bio_her2st.yaml
    HER2ST=/path/to/her2st RUN_DIR=runs/my_her2st python benchmarks/bio_her2st.py

Runs (or resumes; finished stages and folds are skipped) the pipeline, then prints the side-by-side
tables (mean over seeds and folds ± std over runs, per fold), each method's validation-slide search,
λ/τ of the ECA layers, Moran's I of predictions vs truth, the homogeneity of the token and exemplar
sets, and the paired tests behind each claim (ECA vs softmax, vs the ridge probes, vs the best other
method) with a one-line verdict, and the wall time. The encoder is whatever pipelines/bio_her2st.yaml
names (a random-init timm ViT-S/14 by default: no pathology weights can be downloaded here).
Stage keys can be overridden: ``python benchmarks/bio_her2st.py train.methods='[ridge, softmax, eca]'``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eca_core.runner.pipeline import PipelineSpec, run_pipeline

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
            print(f"{transform:8s} {name:16s} holds={c['holds']}  {c['test']['verdict']}")
    print(f"total {time.time() - start:.0f}s; report {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
