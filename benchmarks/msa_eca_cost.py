"""Extra cost of ECA in ALMT's video stream per training step, as a ratio to setting (ii) (ALMT + PCC).

Setting (ii) and setting (iii) (ECA in the video stream + DNPL + the SRA penalty) are built with
the same weights and timed in interleaved rounds (ii, iii, ii, iii, ...) in one process, so drift
in machine load hits both alike. One step is forward, loss, backward and an AdamW update on one
batch of MOSI-shaped inputs (50×768 text, 375×5 audio, 500×20 video by default). The script prints
the median step time of each and the median over rounds of the paired ratio (iii) / (ii) (the
order alternates between rounds), and the same for the video stream alone.

Usage: python benchmarks/msa_eca_cost.py [--batch-size 64] [--rounds 9] [--iters 1] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from eca_core.attention import ECAConfig, collect_lambdas
from eca_core.losses import ECAObjective, LossConfig
from eca_msa.almt import ALMT, ALMTConfig

from attention_cost import time_block  # benchmarks/: the one timing helper


def make_batch(b: int, cfg: ALMTConfig, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = lambda n: torch.randint(n // 3, n + 1, (b,), generator=g)
    batch = {
        "text": torch.randn(b, cfg.text_len, cfg.text_dim, generator=g),
        "audio": torch.randn(b, cfg.audio_len, cfg.audio_dim, generator=g),
        "vision": torch.randn(b, cfg.vision_len, cfg.vision_dim, generator=g),
        "label": 3 * torch.rand(b, generator=g) * 2 - 3,
    }
    for key, n in (("text", cfg.text_len), ("audio", cfg.audio_len), ("vision", cfg.vision_len)):
        batch[f"{key}_mask"] = torch.arange(n)[None] < lengths(n)[:, None]
    return {k: v.to(device) for k, v in batch.items()}


def build(mode: str, pcc: str, sra_weight: float, vision_len: int, audio_len: int, device: str):
    torch.manual_seed(0)
    cfg = ALMTConfig(vision_len=vision_len, audio_len=audio_len, text_model=None, mask_padding=True, video_attention=ECAConfig(mode=mode))
    model = ALMT(cfg).to(device).train()
    objective = ECAObjective(LossConfig(pcc=pcc, pcc_weight=1.0, sra_weight=sra_weight))
    return model, objective, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vision-len", type=int, default=500)
    parser.add_argument("--audio-len", type=int, default=375)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    setups = {
        "(ii) ALMT + PCC": build("softmax", "plain", 0.0, args.vision_len, args.audio_len, args.device),
        "(iii) ALMT + ECA + DNPL": build("eca", "dnpl", 1e-3, args.vision_len, args.audio_len, args.device),
    }
    batch = make_batch(args.batch_size, setups["(ii) ALMT + PCC"][0].cfg, args.device)

    def step(model, objective, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            with collect_lambdas() as lams:
                pred = model(batch)
            loss, _ = objective(pred, batch["label"], lams)
            loss.backward()
            opt.step()
        return run

    def stream(model):
        x = model.proj_vision(batch["vision"]).detach().requires_grad_(True)

        def run():
            model.video_stream(x, batch["vision_mask"]).sum().backward()
        return run

    tasks = {
        "training step": {name: step(*s) for name, s in setups.items()},
        "video stream fwd+bwd": {name: stream(s[0]) for name, s in setups.items()},
    }
    print(f"batch {args.batch_size}, text 50×768, audio {args.audio_len}×5, video {args.vision_len}×20, "
          f"device {args.device}, threads {args.threads}, {args.rounds} interleaved rounds × {args.iters} iters")
    for task, fns in tasks.items():
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        order = list(fns)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                times[name].append(time_block(fns[name], args.iters, torch.device(args.device)))
        med = {name: statistics.median(t) for name, t in times.items()}
        paired = [e / b for b, e in zip(times["(ii) ALMT + PCC"], times["(iii) ALMT + ECA + DNPL"])]
        ratio = statistics.median(paired)
        print(f"{task}:")
        for name, t in med.items():
            print(f"  {name:<26} median {1000 * t:8.1f} ms")
        print(f"  ratio (iii)/(ii) = {ratio:.3f} (median of per-round ratios; range {min(paired):.3f}-{max(paired):.3f})"
              f"  ECA's extra cost: {100 * (ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
