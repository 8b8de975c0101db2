"""``eca-msa evaluate``: mean ± std over seeds per setting (markdown + JSON) and validation curves (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eca_core.runner.config import from_dict
from eca_core.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from eca_core.runner.pipeline import StageContext
from eca_msa.metrics import HIGHER_IS_BETTER
from eca_msa.configs import SETTING_LABELS, EvaluateConfig, MSATrainConfig

RERUN = "re-run `eca-msa train`"
SHORT = {"Non0_F1_score": "F1 (Non0)", "Corr": "Corr", "MAE": "MAE", "Has0_acc_2": "Acc-2 (Has0)", "Has0_F1_score": "F1 (Has0)",
         "Non0_acc_2": "Acc-2 (Non0)", "Mult_acc_5": "Acc-5", "Mult_acc_7": "Acc-7", "Mult_acc_2": "Acc-2", "Mult_acc_3": "Acc-3",
         "F1_score": "F1"}
MOSI_ORDER = ["Non0_F1_score", "Corr", "MAE", "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Mult_acc_5", "Mult_acc_7"]
SIMS_ORDER = ["F1_score", "Corr", "MAE", "Mult_acc_2", "Mult_acc_3", "Mult_acc_5"]


def load_runs(train_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``<setting>/seed<k>/metrics.json`` listed in ``results.json`` (with its per-epoch history)."""
    train_dir = Path(train_dir)
    index = train_dir / "results.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no training results (run `eca-msa train` first)")
    runs = []
    for entry in read_json(index, hint=RERUN).get("runs", []):
        path = train_dir / entry["dir"] / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {index} but missing")
        runs.append(read_json(path, hint=RERUN))
    if not runs:
        raise ValueError(f"{index}: lists no runs")
    return runs


def aggregate(runs: list[dict[str, Any]], ddof: int = 1) -> dict[str, dict[str, Any]]:
    """Per setting: seeds, and mean/std/values of every test metric and of the selected epoch."""
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == setting]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "metrics": {}}
        keys = [k for k in rs[0]["test"] if k in HIGHER_IS_BETTER]
        for key in keys + ["best_epoch"]:
            # best_epoch is reported 1-based (the first epoch is 1), as on the curves
            vals = np.array([r["best_epoch"] + 1 if key == "best_epoch" else r["test"][key] for r in rs], dtype=np.float64)
            std = float(vals.std(ddof=ddof)) if len(vals) > ddof else float("nan")
            entry["metrics"][key] = {"mean": float(vals.mean()), "std": std, "values": vals.tolist()}
        out[setting] = entry
    return out


def _fmt(m: dict[str, float]) -> str:
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if np.isfinite(m["std"]) else f"{m['mean']:.4f}"


def markdown_table(agg: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """Settings side by side: test metrics as mean ± std over seeds, then differences to ``baseline``."""
    first = next(iter(agg.values()))["metrics"]
    order = [k for k in (MOSI_ORDER if "Non0_F1_score" in first else SIMS_ORDER) if k in first]
    head = "| setting | seeds | " + " | ".join(SHORT[k] for k in order) + " | selected epoch |"
    lines = [head, "|" + "---|" * (len(order) + 3)]
    for setting, e in agg.items():
        cells = [_fmt(e["metrics"][k]) for k in order] + [f"{e['metrics']['best_epoch']['mean']:.1f}"]
        lines.append(f"| {SETTING_LABELS.get(setting, setting)} | {len(e['seeds'])} | " + " | ".join(cells) + " |")
    if baseline in agg:
        for setting, e in agg.items():
            if setting == baseline:
                continue
            diffs = [e["metrics"][k]["mean"] - agg[baseline]["metrics"][k]["mean"] for k in order]
            lines.append(f"| Δ {setting} − {baseline} | | " + " | ".join(f"{d:+.4f}" for d in diffs) + " | |")
    return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Validation Corr and MAE per epoch: thin line per seed, thick line the mean over seeds, dots the selected epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    colors = dict(zip(settings, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, key in zip(axes, ("Corr", "MAE")):
        for setting in settings:
            rs = [r for r in runs if r["setting"] == setting]
            curves = [np.array([h[key] for h in r["history"]], dtype=float) for r in rs]
            for r, c in zip(rs, curves):
                ax.plot(np.arange(1, len(c) + 1), c, color=colors[setting], alpha=0.3, lw=0.8)
                ax.plot(r["best_epoch"] + 1, c[r["best_epoch"]], "o", color=colors[setting], ms=4)
            n = max(len(c) for c in curves)
            stacked = np.full((len(curves), n), np.nan)
            for i, c in enumerate(curves):
                stacked[i, : len(c)] = c
            ax.plot(np.arange(1, n + 1), np.nanmean(stacked, 0), color=colors[setting], lw=2, label=SETTING_LABELS.get(setting, setting))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {key}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Validation curves (thin: seeds, thick: mean, dots: selected epochs)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def _homogeneity_line(data: dict[str, Any]) -> str:
    train = data.get("train", {})
    if "vision_dispersion_rms" not in train:
        return ""
    return (f"Video frames (train): in-sample dispersion RMS {train['vision_dispersion_rms']:.3f}, hull radius RMS "
            f"{train['vision_hull_radius_rms']:.3f}, spread of clip means across clips {train['vision_cross_sample_rms']:.3f}.")


def step_costs(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Wall seconds per training step (forward, backward, optimizer) of each setting: mean over seeds of each run's median."""
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        per_step = [r["step_seconds_median"] for r in runs if r["setting"] == setting and np.isfinite(r.get("step_seconds_median", np.nan))]
        if per_step:
            out[setting] = float(np.mean(per_step))
    return out


def _cost_line(costs: dict[str, float]) -> str:
    if not costs:
        return ""
    parts = [f"{SETTING_LABELS.get(s, s)} {1e3 * c:.1f} ms" for s, c in costs.items()]
    line = "Training cost per step (median step of each run, mean over seeds, this machine): " + ", ".join(parts)
    if "almt_eca" in costs and "almt_pcc" in costs:
        line += f"; ECA/(ii) = {costs['almt_eca'] / costs['almt_pcc']:.2f}×"
    return line + "."


def _selection_line(selection: str) -> str:
    return (f"Model selection on the validation split only, never on the test split: the {selection} "
            f"(early stopping on the same metric); every test metric of a run comes from that one epoch. "
            f"(ALMT's own script reports its best test epoch; these numbers do not.)")


def evaluate(train_dir: str | Path, out_dir: str | Path, cfg: EvaluateConfig | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``curves.png`` into ``out_dir``; return the report dict."""
    cfg = cfg or EvaluateConfig()
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    runs = load_runs(train_dir)
    agg = aggregate(runs, cfg.std_ddof)
    results = read_json(train_dir / "results.json", hint=RERUN)
    table = markdown_table(agg, cfg.baseline)
    selection = runs[0]["selection"]
    train_cfg = from_dict(MSATrainConfig, results["config"], str(train_dir / "results.json"))
    provenance = train_cfg.provenance()
    costs = step_costs(runs)
    data = results.get("data", {})
    sizes = ", ".join(f"{s} {data[s]['n']}" for s in ("train", "valid", "test") if s in data)
    text = "\n".join([
        "# ALMT with ECA in the video stream: test metrics",
        "",
        f"Data: `{data.get('source', '?')}` ({sizes}). Mean ± standard deviation (ddof={cfg.std_ddof}) over seeds.",
        f"Configuration: {provenance}.",
        _selection_line(selection),
        _homogeneity_line(data),
        "Metrics as MMSA's metricsTop: Has0 = truth ≥ 0 vs pred ≥ 0; Non0 = zeros dropped, > 0 vs > 0; F1 weighted.",
        "",
        table,
        "",
        _cost_line(costs),
        "",
        "![validation curves](curves.png)",
        "",
    ])
    plot_curves(runs, out_dir / "curves.png")
    write_text_atomic(out_dir / "report.md", text)
    report = {"selection": selection, "configuration": provenance, "preset": train_cfg.preset, "options": train_cfg.options,
              "data": data, "settings": agg, "step_seconds": costs, "table_markdown": table}
    write_json_atomic(out_dir / "report.json", report)
    return report


def run_stage(ctx: StageContext) -> dict[str, Any]:
    report = evaluate(ctx.stage_dir("train"), ctx.out_dir, ctx.config)
    print(report["table_markdown"])
    return {"report": str(ctx.out_dir / "report.md"), "curves": str(ctx.out_dir / "curves.png"),
            "corr_mean": {s: e["metrics"]["Corr"]["mean"] for s, e in report["settings"].items()}}
