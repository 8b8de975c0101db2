"""Embedding-stage throughput on the her2st sections vs the bare encoder forward on pre-cut tensors.

Claim (issue 3): with DataLoader workers reading and cutting patches, the preprocess embedding stage runs
at >= 0.85 of the encoder's own forward throughput at the same batch size, i.e. reading/tiling is hidden
behind compute. Both are measured in this one run, interleaved section by section (the embedding stage on
one section, then the bare forward on as many pre-cut patches), so a change in machine load hits both.
Each section is a separate embedding run, so worker start-up and JPEG decoding are paid four times (a
conservative count). Also prints peak resident memory of this process and of its DataLoader workers.

    OMP_NUM_THREADS=1 python benchmarks/embed_throughput.py [--her2st ../shared/data/her2st] [--threads 1]
        [--num-workers 1] [--batch-size 32] [--encoder vit_small_patch16_224] [--sections B4 C2 C3 C4]
        [--accelerator gpu --precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eca_bio.features.embed import SlideJob, embed_slides
from eca_bio.features.encoders import EncoderConfig, build_encoder
from eca_bio.inputs.slides import open_slide
from eca_bio.inputs.st import exclude_outside_image, find_sections, read_section
from eca_bio.inputs.tiling import patch_size_px, spot_patches


def bare_forward(encoder, norm, patches: np.ndarray, n_patches: int, device: torch.device = torch.device("cpu"),
                 bf16: bool = False) -> float:
    """Seconds for encoder(x) over ``n_patches`` patches in batches of ``len(patches)`` already-normalised tensors
    (on ``device``, under bf16 autocast if asked, as Lightning's ``bf16-mixed`` runs it)."""
    x = norm(patches).to(device)  # (B, 3, P, P) float32
    n_batches = -(-n_patches // len(patches))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as Trainer.predict runs it
        start = time.perf_counter()
        for _ in range(n_batches):
            pooled, tokens = encoder(x)
            pooled.half().cpu().numpy(), tokens.half().cpu().numpy()  # same float16 host copy as the pipeline
        return (time.perf_counter() - start) * n_patches / (n_batches * len(patches))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--her2st", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st")
    ap.add_argument("--sections", nargs="+", default=None)
    ap.add_argument("--encoder", default="vit_small_patch16_224")
    ap.add_argument("--patch-um", type=float, default=112.0)
    ap.add_argument("--patch-px", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both measurements)")
    ap.add_argument("--token-grid", type=int, default=None)
    ap.add_argument("--accelerator", default="cpu", help="cpu | gpu (the embedding stage's Lightning accelerator)")
    ap.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on GPUs (both measurements)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    jobs_in = []
    for sec in find_sections(args.her2st, "legacy_st", args.sections):
        adata = read_section(sec)
        reader = open_slide(adata.uns["st"]["image"], mpp=adata.uns["st"]["array_mpp"])
        exclude_outside_image(adata, *reader.dimensions)
        size = patch_size_px(args.patch_um, reader.mpp)
        jobs_in.append((sec.section_id, reader, spot_patches(adata.obsm["spatial"], size), size, list(adata.obs_names)))
    n_patches = sum(len(j[2]) for j in jobs_in)

    cfg = EncoderConfig(args.encoder, pretrained=False, kwargs={"img_size": args.patch_px})  # timm ViTs take any input size
    encoder, norm, info = build_encoder(cfg, args.patch_px, args.token_grid)
    sid, reader, coords, size, _ = jobs_in[0]
    patches = np.stack([np.asarray(reader.read_region(int(x), int(y), size, size, size=(args.patch_px,) * 2))
                        for x, y in coords[: args.batch_size]])
    reader.close()  # drop the decoded image: the pipeline's workers decode their own

    print(f"encoder {args.encoder} (random init), feature_dim {info['feature_dim']}, tokens {info['num_tokens']}; "
          f"batch {args.batch_size}, torch threads {args.threads}, DataLoader workers {args.num_workers}")
    print(f"her2st: {len(jobs_in)} sections, {n_patches} spot patches of {args.patch_um:g} um -> {args.patch_px} px")
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    bf16 = args.precision.startswith("bf16")
    encoder.to(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        encoder(norm(patches).to(device))  # warm-up
    t_pipe = t_bare = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for s, r, c, z, b in jobs_in:
            job = SlideJob(s, r, c, z, Path(tmp) / f"{s}.h5", {"slide_id": s}, b)
            start = time.perf_counter()
            done = embed_slides([job], encoder, norm, info["feature_dim"], info["num_tokens"], args.patch_px,
                                batch_size=args.batch_size, num_workers=args.num_workers,
                                runtime={"accelerator": args.accelerator, "devices": 1}, progress=False, precision=args.precision)
            tp = time.perf_counter() - start
            assert done == [s], done
            tb = bare_forward(encoder, norm, patches, len(c), device, bf16)
            t_pipe, t_bare = t_pipe + tp, t_bare + tb
            print(f"  {s}: {len(c)} patches  embedding stage {len(c) / tp:.2f} patches/s  bare forward {len(c) / tb:.2f} patches/s")
    pipeline, bare = n_patches / t_pipe, n_patches / t_bare
    ratio = pipeline / bare
    print(f"embedding stage (read + cut + embed + write HDF5): {pipeline:.2f} patches/s")
    print(f"bare encoder forward on pre-cut tensors:             {bare:.2f} patches/s")
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"throughput ratio pipeline / bare = {ratio:.3f} (target >= 0.85)")
    print(f"peak RSS: main process {me:.0f} MiB, largest DataLoader worker {kids:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
