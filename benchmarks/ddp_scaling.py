"""Embedding-stage throughput with 1 and 2 processes (Lightning DDP launch, gloo on CPU) on the same slides.

Claim (issue 9): tiles are sharded over ranks, so 2 processes embed the same slides ≥ 1.7x as fast as 1
(one torch thread per process on this CPU; on a GPU machine run it with --accelerator gpu and read the
per-device throughput). Each run is the real `eca-bio preprocess` command in a fresh output folder; the
throughput is the patches the stage reports divided by the embedding time it reports (process start-up,
slide planning and the final assembly by rank 0 are printed separately as wall time). Runs alternate
1-2-2-1-... so a change in machine load hits both, and the median of the per-round ratios is printed.

    python benchmarks/ddp_scaling.py [--her2st ../shared/data/her2st] [--sections C2 C3] [--rounds 2]
        [--encoder vit_small_patch16_224] [--batch-size 16] [--accelerator cpu]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"embedded (\d+) patches of \d+ slide\(s\) in ([\d.]+)s")


def run_once(args: argparse.Namespace, devices: int, out: Path) -> tuple[float, float, int]:
    """(patches per second of the embedding stage, wall seconds of the command, patches)."""
    cmd = [sys.executable, "-m", "eca_bio.cli", "preprocess", "--st-dir", str(args.her2st), "--sections", *args.sections,
           "--out", str(out), "--encoder.name", args.encoder, "--no-encoder.pretrained", "--batch-size", str(args.batch_size),
           "--accelerator", args.accelerator, "--num-workers", str(args.num_workers)]
    if devices > 1:
        cmd += ["--devices", str(devices), "--strategy", "ddp"]
    else:
        cmd += ["--devices", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    m = LINE.search(proc.stdout)
    if m is None:
        sys.exit(f"no 'embedded N patches' line in the output of {' '.join(cmd)}:\n{proc.stdout[-2000:]}")
    n, seconds = int(m.group(1)), float(m.group(2))
    return n / seconds, wall, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--her2st", type=Path, default=ROOT.parent / "shared" / "data" / "her2st")
    parser.add_argument("--sections", nargs="+", default=["C2", "C3"])
    parser.add_argument("--encoder", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="processes of the multi-process run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (1, args.devices) if r % 2 == 0 else (args.devices, 1)
            result = {}
            for devices in order:
                result[devices] = run_once(args, devices, Path(tmp) / f"r{r}_d{devices}")
                rows.append((r, devices, *result[devices]))
                print(f"round {r}: {devices} process(es): {result[devices][0]:.2f} patches/s "
                      f"({result[devices][2]} patches), command wall {result[devices][1]:.1f}s", flush=True)
            ratios.append(result[args.devices][0] / result[1][0])
    print()
    print(f"| processes | embedding throughput (patches/s, median over {args.rounds} rounds) |")
    print("|---|---|")
    for devices in (1, args.devices):
        print(f"| {devices} | {statistics.median(r[2] for r in rows if r[1] == devices):.2f} |")
    ratio = statistics.median(ratios)
    print(f"\nthroughput ratio {args.devices} / 1 process: {ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"per device: {ratio / args.devices:.2f}")
    print(f"target >= 1.7 with {args.threads} thread(s) per process: {'PASS' if ratio >= 1.7 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
