"""The paper's synthetic benchmark (App. G.1): one gating-attention layer, softmax vs ECA, four homogeneity levels.

Generator (DESIGN §2): unit signal direction u and orthogonal noise direction v; sample centres
c_i ~ N(0, σ_c² I); n−1 background elements c_i + N(0, σ_floor² I); one key element
c_i + a_i·u + η_i·v with a_i = contrast·U(1 − spread, 1 + spread) and η_i ~ N(0, (noise·contrast)²);
target y_i = u·(c_i + κ·a_i·u) + N(0, σ_y²). κ is set per level so that κ·std(a) = ``signal``:
every level asks the same share of the target from the key element, so a more homogeneous level
(smaller contrast) needs more extrapolation — the task gets harder as homogeneity rises, as in the
paper's Figure 5. The level's ``contrast`` is calibrated so the mean in-sample dispersion d of the
generated sets is ≈ 0.10, 0.24, 0.42, 0.73.

Model: the paper's gating attention — logits from a linear layer over the elements, z = the
aggregated elements (``ECAPooling(dim, value_proj=False, out_proj=False)``), prediction w·z + b.
Trained full-batch with Adam on MSE + λ_pcc·(DNPL | plain PCC) + γ·(λ − 1)².

Command: ``eca synthetic [--quick] --out DIR`` writes results.json, results.md and PNG curves.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from eca_core.attention import ECAConfig, ECAPooling, collect_lambdas
from eca_core.runner.config import to_dict
from eca_core.losses import ECAObjective, LossConfig, pcc_per_dim
from eca_core.variants import VARIANTS as ALL_VARIANTS, pcc_term
from eca_core.variants import layer_config

VARIANTS = tuple(ALL_VARIANTS)
# Mean key contrast per level, calibrated so mean d ≈ 0.10, 0.24, 0.42, 0.73 (checked by tests/core/test_synthetic.py).
LEVEL_CONTRAST = {"d=0.10": 0.274, "d=0.24": 0.707, "d=0.42": 1.250, "d=0.73": 2.180}
LEVEL_TARGET_D = {"d=0.10": 0.10, "d=0.24": 0.24, "d=0.42": 0.42, "d=0.73": 0.73}


@dataclass
class SyntheticConfig:
    """Data-generating process of App. G.1 (paper Table 4 defaults where the paper gives them)."""

    dim: int = 16
    n_elements: int = 10
    n_train: int = 2000
    n_val: int = 300
    sigma_c: float = 1.0  # cross-sample variation of the centres
    sigma_floor: float = 0.01  # noise floor of the background elements
    sigma_y: float = 0.01  # label noise
    contrast: float = 0.274  # mean signal contrast a_i of the key element along u
    spread: float = 0.9  # a_i = contrast · U(1 − spread, 1 + spread)
    noise: float = 0.5  # std of the key element's offset along v, relative to contrast
    signal: float = 3.0  # κ·std(a): the target's share from the key element, same at every level

    def __post_init__(self) -> None:
        if self.dim < 2 or self.n_elements < 2:
            raise ValueError(f"SyntheticConfig needs dim >= 2 and n_elements >= 2, got {self.dim}, {self.n_elements}")
        if not 0 <= self.spread < 1 or self.contrast <= 0:
            raise ValueError(f"SyntheticConfig needs contrast > 0 and 0 <= spread < 1, got {self.contrast}, {self.spread}")

    @property
    def kappa(self) -> float:
        """Ground-truth extrapolation factor κ = signal / std(a)."""
        std_a = self.contrast * self.spread / math.sqrt(3.0)
        return self.signal / std_a if std_a > 0 else 1.0


@dataclass
class SyntheticData:
    """Train/val sets (N, n, d) and targets (N,), with the directions that generated them."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    u: Tensor
    v: Tensor


def level_config(level: str, **overrides) -> SyntheticConfig:
    """The generator config of a named homogeneity level (``d=0.10`` … ``d=0.73``)."""
    if level not in LEVEL_CONTRAST:
        raise ValueError(f"unknown homogeneity level {level!r}; choose from {list(LEVEL_CONTRAST)}")
    return SyntheticConfig(**{"contrast": LEVEL_CONTRAST[level], **overrides})


def generate(cfg: SyntheticConfig, seed: int = 0) -> SyntheticData:
    """Draw one train/val data set from the DGP (deterministic given ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(cfg.dim, generator=g)
    u = u / u.norm()
    v = torch.randn(cfg.dim, generator=g)
    v = v - (v @ u) * u  # Gram-Schmidt
    v = v / v.norm()

    def draw(n: int) -> tuple[Tensor, Tensor]:
        c = cfg.sigma_c * torch.randn(n, cfg.dim, generator=g)  # (n, d) centres
        x = c[:, None, :] + cfg.sigma_floor * torch.randn(n, cfg.n_elements, cfg.dim, generator=g)  # (n, T, d)
        a = cfg.contrast * (1.0 + cfg.spread * (2.0 * torch.rand(n, generator=g) - 1.0))  # (n,)
        eta = cfg.noise * cfg.contrast * torch.randn(n, generator=g)
        key = torch.randint(cfg.n_elements, (n,), generator=g)
        x[torch.arange(n), key] = c + a[:, None] * u + eta[:, None] * v
        y = c @ u + cfg.kappa * a + cfg.sigma_y * torch.randn(n, generator=g)
        return x, y

    x_train, y_train = draw(cfg.n_train)
    x_val, y_val = draw(cfg.n_val)
    return SyntheticData(x_train, y_train, x_val, y_val, u, v)


class GatingRegressor(nn.Module):
    """One attention layer over raw elements + a linear head: ŷ_i = w·z_i + b (paper App. G.1.2)."""

    def __init__(self, dim: int, cfg: ECAConfig) -> None:
        super().__init__()
        self.pool = ECAPooling(dim, value_proj=False, out_proj=False, cfg=cfg)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, n, d) → ŷ (B,)."""
        return self.head(self.pool(x, context_mask=mask)[:, 0]).squeeze(-1)


@dataclass
class SyntheticTrainConfig:
    """Optimisation and ECA hyper-parameters, shared by every level (paper Table 4 ranges in comments)."""

    epochs: int = 1000
    lr: float = 1e-2  # 1e-3 … 1e-2
    pcc_weight: float = 0.5  # 0.3 … 0.8
    sra_weight: float = 1e-3  # γ
    tau_min: float = 0.3  # 0 … 0.8
    beta: float = 1.0  # 0.5 … 3
    lambda_max: float = 2.0

    def eca_config(self, variant: str) -> ECAConfig:
        return layer_config(variant, tau_min=self.tau_min, beta=self.beta, lambda_max=self.lambda_max)

    def loss_config(self, variant: str) -> LossConfig:
        """The variant's PCC term (plain for softmax and w/o-DNPL, DNPL otherwise; see eca_core.variants)."""
        return LossConfig(pcc=pcc_term(variant), pcc_weight=self.pcc_weight, sra_weight=self.sra_weight)


@dataclass
class RunResult:
    """Curves and final numbers of one (level, variant, seed) training run."""

    level: str
    variant: str
    seed: int
    train_pcc: list[float]
    val_pcc: list[float]
    train_mse: list[float]
    val_mse: list[float]
    final_val_pcc: float
    final_val_mse: float
    mean_lambda: float  # mean λ over validation samples at the end (1 = convex attention)


def _pcc_mse(pred: Tensor, y: Tensor) -> tuple[float, float]:
    rho, _, _ = pcc_per_dim(pred.detach(), y)
    return float(rho[0]), float(((pred.detach() - y) ** 2).mean())


def train_variant(data: SyntheticData, variant: str, cfg: SyntheticTrainConfig, seed: int = 0, level: str = "") -> RunResult:
    """Train one gating-attention regressor full-batch and record per-epoch train/val PCC and MSE."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    torch.manual_seed(seed)
    model = GatingRegressor(data.x_train.shape[-1], cfg.eca_config(variant))
    objective = ECAObjective(cfg.loss_config(variant))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curves: dict[str, list[float]] = {"train_pcc": [], "val_pcc": [], "train_mse": [], "val_mse": []}
    for _ in range(cfg.epochs):
        model.train()
        with collect_lambdas() as lams:
            pred = model(data.x_train)
        loss, _ = objective(pred, data.y_train, lams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tp, tm = _pcc_mse(pred, data.y_train)
        model.eval()
        with torch.no_grad():
            vp, vm = _pcc_mse(model(data.x_val), data.y_val)
        for key, value in zip(curves, (tp, vp, tm, vm)):
            curves[key].append(value)
    model.eval()
    with torch.no_grad():
        pred, aux = model.pool(data.x_val, return_aux=True)
        pred = model.head(pred[:, 0]).squeeze(-1)
    vp, vm = _pcc_mse(pred, data.y_val)
    return RunResult(level, variant, seed, curves["train_pcc"], curves["val_pcc"], curves["train_mse"], curves["val_mse"],
                     vp, vm, float(aux.lam.mean()))


# ----------------------------------------------------------------------------- the benchmark

@dataclass
class BenchmarkConfig:
    """Which levels, variants and seeds to run, with the training settings and generator overrides."""

    levels: list[str] = field(default_factory=lambda: list(LEVEL_CONTRAST))
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train: SyntheticTrainConfig = field(default_factory=SyntheticTrainConfig)
    n_train: int = 2000
    n_val: int = 300
    signal: float = 3.0

    @classmethod
    def quick(cls) -> "BenchmarkConfig":
        """~1 minute on 2 cores: softmax and full ECA, 3 seeds, 200 epochs, 1000 train sets."""
        return cls(variants=["softmax", "eca"], train=SyntheticTrainConfig(epochs=200), n_train=1000)


def _mean_pool_pcc(data: SyntheticData) -> float:
    from eca_core.diagnostics import mean_pool_baseline

    rho, _, _ = mean_pool_baseline(data.x_train.numpy(), data.y_train.numpy(),
                                   x_eval=data.x_val.numpy(), y_eval=data.y_val.numpy())
    return float(rho[0])


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True, on_level: Callable[[dict], None] | None = None) -> dict:
    """Run every (level, variant, seed); return the results as a JSON-ready dict.

    ``on_level`` receives the results so far after each finished level (used to save partial work).
    """
    from tqdm.auto import tqdm

    from eca_core.diagnostics import set_statistics

    runs: list[RunResult] = []
    levels: dict[str, dict] = {}
    total = len(cfg.levels) * len(cfg.variants) * len(cfg.seeds)
    bar = tqdm(total=total, desc="synthetic", unit="run", disable=not progress)
    started = time.time()
    for level in cfg.levels:
        gen = level_config(level, n_train=cfg.n_train, n_val=cfg.n_val, signal=cfg.signal)
        info = {"generator": to_dict(gen), "kappa": gen.kappa, "d_mean": [], "mean_pool_pcc": []}
        for seed in cfg.seeds:
            data = generate(gen, seed)
            _, d, _ = set_statistics(data.x_train)
            info["d_mean"].append(float(d.mean()))
            info["mean_pool_pcc"].append(_mean_pool_pcc(data))
            for variant in cfg.variants:
                bar.set_postfix_str(f"{level} {variant} seed {seed}")
                runs.append(train_variant(data, variant, cfg.train, seed, level))
                bar.update()
        levels[level] = info
        if on_level is not None:
            on_level(_results(cfg, levels, runs, started))
    bar.close()
    return _results(cfg, levels, runs, started)


def _results(cfg: BenchmarkConfig, levels: dict[str, dict], runs: list[RunResult], started: float) -> dict:
    return {"config": to_dict(cfg), "levels": dict(levels), "runs": [to_dict(r) for r in runs],
            "summary": summarise(runs, levels), "seconds": time.time() - started}


def summarise(runs: Sequence[RunResult], levels: dict[str, dict]) -> dict[str, dict]:
    """Per level and variant: mean/std of final val PCC and MSE, mean λ; plus the softmax-vs-ECA deltas."""
    out: dict[str, dict] = {}
    for level, info in levels.items():
        row: dict[str, dict] = {}
        for variant in dict.fromkeys(r.variant for r in runs if r.level == level):
            sel = [r for r in runs if r.level == level and r.variant == variant]
            pcc = np.array([r.final_val_pcc for r in sel])
            mse = np.array([r.final_val_mse for r in sel])
            row[variant] = {"val_pcc_mean": float(pcc.mean()), "val_pcc_std": float(pcc.std()),
                            "val_mse_mean": float(mse.mean()), "val_mse_std": float(mse.std()),
                            "lambda_mean": float(np.mean([r.mean_lambda for r in sel])), "n_seeds": len(sel)}
        entry = {"d_mean": float(np.mean(info["d_mean"])), "kappa": info["kappa"],
                 "mean_pool_pcc": float(np.mean(info["mean_pool_pcc"])), "variants": row}
        if "softmax" in row and "eca" in row:
            entry["delta_pcc_eca_minus_softmax"] = row["eca"]["val_pcc_mean"] - row["softmax"]["val_pcc_mean"]
            entry["mse_ratio_eca_over_softmax"] = row["eca"]["val_mse_mean"] / row["softmax"]["val_mse_mean"]
        out[level] = entry
    return out


def format_markdown(results: dict) -> str:
    """The results table as markdown."""
    summary = results["summary"]
    train = results["config"]["train"]
    lines = ["# Synthetic benchmark: ECA vs softmax attention (paper App. G.1)", "",
             f"Seeds: {results['config']['seeds']}; {train['epochs']} full-batch Adam epochs, lr {train['lr']}, "
             f"pcc_weight {train['pcc_weight']}, tau_min {train['tau_min']}, beta {train['beta']}, "
             f"lambda_max {train['lambda_max']}, SRA gamma {train['sra_weight']}; "
             f"{results['config']['n_train']} train / {results['config']['n_val']} val sets.", "",
             "| level | measured d | κ | variant | val PCC | val MSE | mean λ |",
             "|---|---|---|---|---|---|---|"]
    for level, entry in summary.items():
        for variant, s in entry["variants"].items():
            lines.append(f"| {level} | {entry['d_mean']:.3f} | {entry['kappa']:.2f} | {variant} | "
                         f"{s['val_pcc_mean']:.4f} ± {s['val_pcc_std']:.4f} | {s['val_mse_mean']:.4f} ± {s['val_mse_std']:.4f} | "
                         f"{s['lambda_mean']:.3f} |")
        lines.append(f"| {level} | {entry['d_mean']:.3f} | {entry['kappa']:.2f} | mean-pool ridge | "
                     f"{entry['mean_pool_pcc']:.4f} | | |")
    if any("delta_pcc_eca_minus_softmax" in e for e in summary.values()):
        lines += ["", "| level | ΔPCC (ECA − softmax) | MSE ratio (ECA / softmax) |", "|---|---|---|"]
        for level, e in summary.items():
            if "delta_pcc_eca_minus_softmax" in e:
                lines.append(f"| {level} | {e['delta_pcc_eca_minus_softmax']:+.4f} | {e['mse_ratio_eca_over_softmax']:.3f} |")
    lines += ["", f"Run time: {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, level: str, path: Path) -> None:
    """PNG of train/val PCC and MSE per epoch for each variant (mean over seeds), mean-pool PCC dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if r["level"] == level]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for variant in variants:
        sel = [r for r in runs if r["variant"] == variant]
        for ax, metric in zip(axes, ("pcc", "mse")):
            for split, style in (("train", ":"), ("val", "-")):
                curve = np.mean([r[f"{split}_{metric}"] for r in sel], axis=0)
                ax.plot(np.arange(1, len(curve) + 1), curve, style, color=colours[variant], label=f"{variant} {split}")
    mp = results["summary"][level]["mean_pool_pcc"]
    axes[0].axhline(mp, color="k", ls="--", lw=1, label=f"mean-pool ridge ({mp:.3f})")
    axes[0].set(xlabel="epoch", ylabel="PCC", title=f"{level}: PCC")
    axes[1].set(xlabel="epoch", ylabel="MSE", title=f"{level}: MSE", yscale="log")
    lo = min(mp, *(min(r["val_pcc"][len(r["val_pcc"]) // 10:]) for r in runs))
    axes[0].set_ylim(max(lo - 0.05, -1), 1.0)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    """results.json, results.md and curves_<level>.png, each written atomically."""
    from eca_core.io import atomic_path, write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    written = [write_json_atomic(out_dir / "results.json", results), write_text_atomic(out_dir / "results.md", format_markdown(results))]
    for level in results["summary"]:
        path = out_dir / f"curves_{level.replace('=', '').replace('.', 'p')}.png"
        with atomic_path(path) as tmp:
            plot_curves(results, level, tmp)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``eca synthetic``."""
    base = BenchmarkConfig()
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic"), help="output folder")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute on 2 cores: softmax vs full ECA only, 3 seeds, 200 epochs, 1000 train sets")
    parser.add_argument("--levels", nargs="+", default=None, choices=list(LEVEL_CONTRAST), help="homogeneity levels")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), help="model variants")
    parser.add_argument("--seeds", type=int, default=None, help=f"number of seeds (default {len(base.seeds)})")
    parser.add_argument("--epochs", type=int, default=None, help=f"full-batch epochs (default {base.train.epochs})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {base.train.lr})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the model is tiny, so more threads mostly add synchronisation overhead")


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    cfg = BenchmarkConfig.quick() if args.quick else BenchmarkConfig()
    train = cfg.train
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs)
    if args.lr is not None:
        train = replace(train, lr=args.lr)
    return replace(cfg, train=train,
                   levels=args.levels or cfg.levels, variants=args.variants or cfg.variants,
                   seeds=list(range(args.seeds)) if args.seeds is not None else cfg.seeds)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    results = run_benchmark(cfg, on_level=lambda partial: write_outputs(partial, args.out))  # finished levels survive a crash
    paths = write_outputs(results, args.out)
    print(format_markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
