"""``eca-bio diagnose``: homogeneity of a preprocess folder's token sets against their own expression targets.

The core's ``eca diagnose`` reads sets and targets from any array file; this command knows the bio
layout: it reads every slide of a preprocess folder (or the slides named), takes the patch tokens as the
sets and, as targets, the fold-free EGN transform of the top ``--genes`` genes by mean count over the
slides given (:mod:`eca_bio.training.targets`, the same genes and transform training uses), and prints the
dispersion statistics, ρ_0, r and the Theorem 2.2 bound per slide.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from eca_core.diagnostics import format_report, homogeneity_report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pre_dir", type=Path, help="output folder of `eca-bio preprocess` (has manifest.json)")
    parser.add_argument("--slides", nargs="*", default=None, metavar="ID", help="slide ids to report (default: every ST slide)")
    parser.add_argument("--genes", type=int, default=50, help="targets: log10(1 + counts) of this many top genes by mean count")
    parser.add_argument("--alpha", type=float, default=1e-3, help="ridge penalty (times N) of the mean-pooling head")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")


def main(args: argparse.Namespace) -> int:
    from eca_core.errors import ConfigError
    from eca_core.io import write_json_atomic
    from eca_bio.features.feature_set import FeatureSet
    from eca_bio.training.targets import fit_targets, make_targets

    slides = FeatureSet(args.pre_dir).slides(require_expression=True, with_tokens=True)
    if args.slides is not None:
        unknown = sorted(set(args.slides) - {s.slide_id for s in slides})
        if unknown:
            raise ConfigError(f"{args.pre_dir}: no ST slide(s) {unknown}; it has {[s.slide_id for s in slides]}")
        slides = [s for s in slides if s.slide_id in set(args.slides)]
    spec = fit_targets(slides, "egn", args.genes)
    reports = []
    for s in slides:
        if s.tokens is None:
            raise ConfigError(f"{args.pre_dir}: slide {s.slide_id} has no patch tokens (preprocess with store_tokens: true)")
        y = make_targets(s, spec)[0].astype(np.float64)
        report = homogeneity_report(np.asarray(s.tokens, dtype=np.float64), None, y, alpha=args.alpha, output_names=spec.genes)
        print(format_report(report, f"{s.slide_id} (targets: log10(1 + counts) of the top {len(spec.genes)} genes, min-max scaled)"))
        reports.append({"slide": s.slide_id, **report.to_dict()})
    if args.json is not None:
        write_json_atomic(args.json, {"files": reports})
        print(f"wrote {args.json}")
    return 0
