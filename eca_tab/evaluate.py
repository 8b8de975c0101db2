"""``eca-tab evaluate``: MAE / MSE / PCC per method (mean ± std over seeds) beside the paper's row, paired tests
against the FT-Transformer, the per-epoch cost ratio, and the PCC-plateau curves (PNG).

Paired tests (:mod:`eca_core.comparisons`): the methods of one seed share the split and the test rows.
PCC: within a seed, the per-row products z(pred)·z(truth) (their mean over rows is the PCC, so their
paired difference is the PCC difference, row by row), Wilcoxon over rows; across seeds, the seeds'
PCCs. MAE: within a seed, the rows' absolute errors; across seeds, the seeds' MAEs. Both oriented so
that higher is better. The Wilcoxon test within a seed is about the median row difference, not the
mean (heavy-tailed targets such as Appliances can differ in the two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eca_core.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from eca_core.runner.pipeline import StageContext
from eca_tab.datasets import DATASETS
from eca_tab.train import METHOD_LABELS
from eca_tab.configs import TabEvaluateConfig

RERUN = "re-run `eca-tab train`"
METRICS = ("mae", "mse", "pcc")


def load_fits(train_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``results.json`` and every fit's ``result.json`` (with its history) and test predictions."""
    train_dir = Path(train_dir)
    index = train_dir / "results.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no training results (run `eca-tab train` first)")
    results = read_json(index, hint=RERUN)
    fits = []
    for entry in results.get("fits", []):
        folder = train_dir / entry["dir"]
        fit = read_json(folder / "result.json", hint=RERUN)
        try:
            with np.load(folder / "predictions.npz", allow_pickle=False) as z:
                fit["test_pred"], fit["test_truth"] = z["test_pred"], z["test_truth"]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{folder / 'predictions.npz'}: unreadable ({exc}); {RERUN}") from exc
        fits.append(fit)
    if not fits:
        raise ValueError(f"{index}: lists no fits")
    return results, fits


def aggregate(fits: list[dict[str, Any]], ddof: int = 1) -> dict[str, dict[str, Any]]:
    """Per method: seeds, mean / std / values of each test metric, epochs, median epoch seconds."""
    out = {}
    for method in dict.fromkeys(f["method"] for f in fits):
        fs = [f for f in fits if f["method"] == method]
        entry: dict[str, Any] = {"seeds": [f["seed"] for f in fs], "metrics": {},
                                 "best_epochs": [f["best_epoch"] for f in fs],
                                 "epoch_seconds": float(np.median([f["epoch_seconds_median"] for f in fs])),
                                 "parameters": fs[0].get("parameters")}
        for m in METRICS:
            values = [f["test"][m] for f in fs]
            entry["metrics"][m] = {"mean": float(np.mean(values)),
                                   "std": float(np.std(values, ddof=ddof)) if len(values) > ddof else 0.0, "values": values}
        out[method] = entry
    return out


def _standardised(x: np.ndarray) -> np.ndarray:
    s = x.std()
    return (x - x.mean()) / s if s > 0 else np.zeros_like(x)


def paired_tests(fits: list[dict[str, Any]], method: str, baseline: str) -> dict[str, Any]:
    """PCC and MAE of ``method`` vs ``baseline`` over the seeds both ran (see the module docstring)."""
    from eca_core.comparisons import compare_paired

    by = {(f["method"], f["seed"]): f for f in fits}
    seeds = [f["seed"] for f in fits if f["method"] == method and (baseline, f["seed"]) in by]
    units: dict[str, tuple[list, list]] = {"pcc": ([], []), "mae": ([], [])}
    for seed in seeds:
        for side, name in enumerate((method, baseline)):
            f = by[(name, seed)]
            pred, truth = f["test_pred"], f["test_truth"]
            units["pcc"][side].append({"unit": f"seed {seed}", "items": _standardised(pred) * _standardised(truth),
                                       "score": f["test"]["pcc"]})
            units["mae"][side].append({"unit": f"seed {seed}", "items": -np.abs(pred - truth), "score": -f["test"]["mae"]})
    label, base = METHOD_LABELS.get(method, method), METHOD_LABELS.get(baseline, baseline)
    return {m: compare_paired(a, b, label, base, unit="seed", item="row") for m, (a, b) in units.items()}


def _fmt(entry: dict[str, float], scale: float = 1.0) -> str:
    return f"{entry['mean'] / scale:.4g} ± {entry['std'] / scale:.2g}"


def markdown_table(agg: dict[str, dict[str, Any]], dataset: str | None) -> str:
    """Methods × MAE / MSE / PCC, with the paper's row beside ours where the data set is one of the paper's."""
    spec = DATASETS.get(dataset or "")
    scale = spec.mse_scale if spec else 1.0
    unit = f" (×10^{int(round(np.log10(scale)))})" if scale != 1 else ""
    head = f"| method | MAE | MSE{unit} | PCC | best epochs | s / epoch |"
    rows = [head + (" paper MAE | paper MSE | paper PCC |" if spec else ""), "|---" * (6 + (3 if spec else 0)) + "|"]
    for method, e in agg.items():
        m = e["metrics"]
        cells = [METHOD_LABELS.get(method, method), _fmt(m["mae"]), _fmt(m["mse"], scale), _fmt(m["pcc"]),
                 ", ".join(map(str, e["best_epochs"])), f"{e['epoch_seconds']:.2f}"]
        if spec:
            p = spec.paper.get(method, {})
            cells += [f"{p[k]:.3f}" if k in p else "" for k in METRICS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_curves(fits: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The PCC-plateau figure: train / validation PCC and MSE per epoch, mean over the seeds still training, one line
    per method (train values come from the epoch's own batches, dropout on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, method in enumerate(dict.fromkeys(f["method"] for f in fits)):
        hs = [f["history"] for f in fits if f["method"] == method]
        n = max(len(h) for h in hs)  # a seed stopped early leaves the mean to the seeds still training
        color = f"C{i}"
        for ax, metric in zip(axes, ("pcc", "mse")):
            for split, style in (("train", "--"), ("val", "-")):
                padded = np.full((len(hs), n), np.nan)
                for k, h in enumerate(hs):
                    padded[k, :len(h)] = [e[f"{split}_{metric}"] for e in h]
                ax.plot(np.arange(1, n + 1), np.nanmean(padded, axis=0), style, color=color,
                        label=f"{METHOD_LABELS.get(method, method)} ({split})" if metric == "pcc" else None)
    axes[0].set(xlabel="epoch", ylabel="PCC", title="PCC (dashed: train, during the epoch; solid: validation)")
    axes[1].set(xlabel="epoch", ylabel="MSE", title="MSE", yscale="log")
    axes[0].legend(fontsize=7, ncol=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def evaluate(train_dir: str | Path, out_dir: str | Path, cfg: TabEvaluateConfig | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``curves.png`` into ``out_dir``; return the report dict."""
    cfg = cfg or TabEvaluateConfig()
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    results, fits = load_fits(train_dir)
    agg = aggregate(fits, cfg.std_ddof)
    data, config = results["data"], results["config"]
    spec = DATASETS.get(data.get("dataset") or "")
    tests = {m: paired_tests(fits, m, cfg.baseline) for m in agg if m != cfg.baseline and cfg.baseline in agg}
    base_s = agg.get(cfg.baseline, {}).get("epoch_seconds")
    costs = {m: e["epoch_seconds"] / base_s for m, e in agg.items() if base_s}
    split = data["split"]
    split_text = (f"random (seed {split['seed']})" if split["how"] == "random" else f"chronological ({split['order']})")
    model = config["model"]
    lines = [
        f"# {spec.title if spec else data['target']}: FT-Transformer with ECA",
        "",
        f"Data: `{data['source']}`, target `{data['target']}`"
        + (f" ({data['target_transform']} transform; metrics on that scale)" if data["target_transform"] != "none" else "")
        + f"; {len(data['numeric'])} numeric + {len(data['categorical'])} categorical features"
        + (f"; date column(s) {data['dates']['columns']} {'dropped' if data['dates']['treatment'] == 'drop' else 'expanded'}"
           if data["dates"]["columns"] else "")
        + f"; numeric scaling: {data['scaling']['method']}.",
        f"Split: {split_text}, train {data['sizes']['train']} / validation {data['sizes']['val']} / test {data['sizes']['test']} rows.",
        f"Model: `rtdl_revisiting_models.FTTransformer`, blocks {model['n_blocks']}, d_token {model['d_block']}, "
        f"{model['attention_n_heads']} heads, attention / FFN / residual dropout {model['attention_dropout']} / "
        f"{model['ffn_dropout']} / {model['residual_dropout']}, ReGLU FFN ×{model['ffn_d_hidden_multiplier']:.3g}; ECA "
        f"variants swap every block's attention (`eca_core.swap_attention`), τ_min {config['tau_min']}, β {config['beta']}, "
        f"λ_max {config['lambda_max']}.",
        f"Training: AdamW lr {config['lr']}, weight decay {config['weight_decay']} (none on embeddings, norms, biases), "
        f"batch {config['batch_size']}, at most {config['epochs']} epochs, the epoch with the lowest validation MSE "
        f"(patience {config['patience']}); loss MSE + {config['pcc_weight']}·(PCC or DNPL, per variant) + "
        f"{config['sra_weight']}·SRA penalty on the standardised target. Test metrics from that epoch only.",
        f"Mean ± standard deviation (ddof={cfg.std_ddof}) over seeds {next(iter(agg.values()))['seeds']}."
        + (" The paper's columns are its Table (FT-Transformer, batch 128, dropout 0.1, d 256, 8 heads; split not stated)."
           if spec else ""),
        "",
        markdown_table(agg, data.get("dataset")),
        "",
    ]
    if costs:
        lines.append("Per-epoch training time relative to the FT-Transformer (median over epochs and seeds): "
                     + ", ".join(f"{METHOD_LABELS.get(m, m)} {r:.2f}×" for m, r in costs.items() if m != cfg.baseline) + ".")
        lines.append("")
    for m, t in tests.items():
        for metric in ("pcc", "mae"):
            c = t[metric]
            per = " | ".join(f"{u['median_diff']:+.3g} (r {u['rank_biserial']:+.2f}, p {u['p']:.2g})" for u in c["per_unit"])
            lines.append(f"- {metric.upper()}: {c['verdict']}. Per seed, median row difference "
                         f"({'z·z products' if metric == 'pcc' else '−absolute error'}; rank-biserial r, Wilcoxon p): {per}; "
                         f"across seeds: mean {c['across_units']['mean_diff']:+.4g}, p {c['across_units']['p']:.2g}.")
    lines += ["", "![PCC plateau: train / validation PCC and MSE per epoch](curves.png)", ""]
    plot_curves(fits, out_dir / "curves.png", spec.title if spec else data["target"])
    text = "\n".join(lines)
    write_text_atomic(out_dir / "report.md", text)
    report = {"data": data, "config": config, "methods": agg, "paired_tests": tests, "epoch_cost_ratio": costs,
              "paper": spec.paper if spec else None, "table_markdown": markdown_table(agg, data.get("dataset"))}
    write_json_atomic(out_dir / "report.json", report)
    return report


def run_stage(ctx: StageContext) -> dict[str, Any]:
    report = evaluate(ctx.stage_dir("train"), ctx.out_dir, ctx.config)
    print(report["table_markdown"])
    return {"report": str(ctx.out_dir / "report.md"), "curves": str(ctx.out_dir / "curves.png"),
            "pcc_mean": {m: e["metrics"]["pcc"]["mean"] for m, e in report["methods"].items()}}
