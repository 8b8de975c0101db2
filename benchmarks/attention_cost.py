"""Forward+backward cost of the ECA layers against the same layers in softmax mode, on the same shapes.

For each shape, the softmax and ECA layers are timed in interleaved rounds (A, B, A, B, ...) in
one process, so drift in machine load hits both alike; the script prints the median time of each
and the ratio ECA / softmax. Target: ratio <= 1.3.

Usage: python benchmarks/attention_cost.py [--rounds 15] [--iters 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eca_core.attention import ECAConfig, ECACrossAttention, ECAPooling


@dataclass
class Shape:
    name: str
    layer: str  # "pooling" or "cross"
    batch: int
    elements: int
    dim: int
    heads: int
    queries: int = 1  # pooling queries, or query length L of cross-attention


SHAPES = [
    Shape("pool B=64 N=50 D=128 H=8", "pooling", 64, 50, 128, 8),
    Shape("pool B=256 N=16 D=384 H=8 Q=4", "pooling", 256, 16, 384, 8, 4),
    Shape("cross B=64 L=50 N=50 D=128 H=8", "cross", 64, 50, 128, 8, 50),
    Shape("cross B=256 L=16 N=16 D=384 H=8", "cross", 256, 16, 384, 8, 16),
]


def build(shape: Shape, mode: str) -> nn.Module:
    cfg = ECAConfig(mode=mode)
    if shape.layer == "pooling":
        return ECAPooling(shape.dim, num_queries=shape.queries, num_heads=shape.heads, cfg=cfg)
    return ECACrossAttention(shape.dim, num_heads=shape.heads, cfg=cfg)


class PlainSoftmax(nn.Module):
    """Reference: the softmax layer's own projections around one SDPA call, with no dispersion/λ bookkeeping."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = self.layer
        if isinstance(m, ECAPooling):
            (x, mask) = args
            b = x.shape[0]
            q = m._split(m.query.expand(b, -1, -1))
            kv = x
        else:
            (query, kv) = args
            b = query.shape[0]
            q = m._split(m.q_proj(query))
        k, v = m._split(m.k_proj(kv)), m._split(m.v_proj(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return m.out_proj(out.transpose(1, 2).reshape(b, q.shape[2], -1))


def step_fn(shape: Shape, layer: nn.Module, device: torch.device):
    """A closure running one forward+backward on fixed random inputs (with a padding mask)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.elements, shape.dim, generator=g).to(device)
    mask = torch.ones(shape.batch, shape.elements, dtype=torch.bool)
    mask[: shape.batch // 2, shape.elements * 3 // 4:] = False
    mask = mask.to(device)
    q = torch.randn(shape.batch, shape.queries, shape.dim, generator=g).to(device) if shape.layer == "cross" else None
    layer.to(device).train()

    def step() -> None:
        out = layer(x, context_mask=mask) if q is None else layer(q, x, context_mask=mask)
        out.float().pow(2).mean().backward()
        layer.zero_grad(set_to_none=True)

    return step


def time_block(step, iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=10, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", type=float, default=1.3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds x {args.iters} forward+backward steps")
    print(f"{'shape':<36} {'softmax ms':>11} {'eca ms':>9} {'ratio':>7} {'plain ms':>10} {'eca/plain':>11}")
    ok = True
    for shape in SHAPES:
        steps = {mode: step_fn(shape, build(shape, mode), device) for mode in ("softmax", "eca")}
        steps["plain"] = step_fn(shape, PlainSoftmax(build(shape, "softmax")), device)
        for step in steps.values():  # warm-up
            time_block(step, 3, device)
        times: dict[str, list[float]] = {mode: [] for mode in steps}
        for _ in range(args.rounds):
            for mode, step in steps.items():
                times[mode].append(time_block(step, args.iters, device))
        soft, eca, plain = (statistics.median(times[m]) for m in ("softmax", "eca", "plain"))
        ratio = eca / soft
        ok &= ratio <= args.target
        print(f"{shape.name:<36} {soft * 1e3:11.3f} {eca * 1e3:9.3f} {ratio:7.3f} {plain * 1e3:10.3f} {eca / plain:11.3f}")
    print(f"{'PASS' if ok else 'FAIL'}: ECA forward+backward <= {args.target}x softmax on every shape")
    print("(plain = the softmax layer's projections around one SDPA call, without the layer's mask checks and "
          "dispersion bookkeeping: what a bare softmax attention costs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
