"""Per-step cost of ECA in the FT-Transformer, as a ratio to the FT-Transformer itself (the paper's UCI host).

The FT-Transformer (``rtdl_revisiting_models``) and its ECA variant are built with the same weights and
timed in interleaved rounds (softmax, ECA, softmax, ...; the order alternates) in one process, so drift in
machine load hits both alike. One step is forward, the variant's loss (MSE + PCC, or MSE + DNPL + the SRA
penalty), backward and an AdamW update on one batch of Appliances-shaped input (27 numeric features). An
epoch is a fixed number of such steps, so the per-step ratio is the per-epoch ratio. Prints the median step
time of each and the median over rounds of the paired ratio, for the paper's size (4 blocks, d_token 256)
and the CPU pipeline's (1 block, d_token 64).

Usage: python benchmarks/tab_epoch_cost.py [--batch-size 128] [--rounds 9] [--iters 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from eca_core.attention import collect_lambdas
from eca_core.losses import ECAObjective, LossConfig
from eca_core.variants import get_variant, layer_config
from eca_tab.model import FTConfig, build_ft_transformer, parameter_groups

from attention_cost import paired_ratio, time_block  # benchmarks/: the one timing helper

SIZES = {"paper (4 x 256)": FTConfig(), "cpu pipeline (1 x 64)": FTConfig(n_blocks=1, d_block=64)}


def build(method: str, cfg: FTConfig, device: str):
    torch.manual_seed(0)
    model = build_ft_transformer(27, [], cfg, method).to(device).train()
    sra = 1e-3 if layer_config(method).use_sra else 0.0
    objective = ECAObjective(LossConfig(pcc=get_variant(method).pcc, pcc_weight=0.5, sra_weight=sra))
    return model, objective, torch.optim.AdamW(parameter_groups(model, 1e-5), lr=1e-4)


def step_fn(model, objective, opt, x, y):
    def step() -> None:
        with collect_lambdas() as lams:
            pred = model(x, None).squeeze(-1)
        loss, _ = objective(pred, y, lams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 27, generator=g).to(args.device)
    y = torch.randn(args.batch_size, generator=g).to(args.device)
    print("| size | FT-Transformer ms/step | + ECA ms/step | ECA / FT-Transformer |\n|---|---|---|---|")
    for name, cfg in SIZES.items():
        steps = {m: step_fn(*build(m, cfg, args.device), x, y) for m in ("softmax", "eca")}
        for fn in steps.values():
            time_block(fn, 3, device)  # warm-up
        times: dict[str, list[float]] = {"softmax": [], "eca": []}
        for r in range(args.rounds):
            for m in (("softmax", "eca") if r % 2 == 0 else ("eca", "softmax")):
                times[m].append(time_block(steps[m], args.iters, device))
        print(f"| {name} | {1e3 * statistics.median(times['softmax']):.2f} | {1e3 * statistics.median(times['eca']):.2f} | "
              f"{paired_ratio(times['eca'], times['softmax']):.3f} |", flush=True)


if __name__ == "__main__":
    main()
