"""Paired comparisons of two methods on the same folds: is a difference in PCC real?

Within each fold the two methods are scored on the same genes of the same test spots, so the
per-gene PCCs pair up: a Wilcoxon signed-rank test over genes (scipy) with its effect size, the
median difference and the matched-pairs rank-biserial correlation. Across folds the fold PCC@M
values pair up: a second Wilcoxon test whose smallest attainable two-sided p-value is 2 / 2^n for n
folds, which the verdict says when n folds cannot reach the level. A difference counts only when it
is significant; the verdict is one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALPHA = 0.05


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of a − b: n, median difference, rank-biserial r, p (NaN if all ties)."""
    from scipy.stats import rankdata, wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    nz = d[d != 0]
    out = {"n": int(d.size), "median_diff": float(np.median(d)) if d.size else float("nan"), "mean_diff": float(d.mean()) if d.size else float("nan")}
    if nz.size == 0:
        return out | {"rank_biserial": 0.0, "p": float("nan")}
    ranks = rankdata(np.abs(nz))
    r = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())  # matched-pairs rank-biserial correlation
    p = float(wilcoxon(nz, alternative="two-sided", zero_method="wilcox").pvalue)
    return out | {"rank_biserial": r, "p": p}


def compare_methods(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str, alpha: float = ALPHA) -> dict[str, Any]:
    """Paired tests of method ``a`` vs ``b`` (each ``{"folds": [{"per_gene", "pcc_m", ...}]}``) and a verdict."""
    per_fold = []
    for fa, fb in zip(a["folds"], b["folds"]):
        genes = [g for g, v in fa["per_gene"].items() if v is not None and fb["per_gene"].get(g) is not None]
        test = wilcoxon_paired([fa["per_gene"][g] for g in genes], [fb["per_gene"][g] for g in genes])
        per_fold.append({"fold": fa["fold"], "test": fa["test"], **test})
    folds = wilcoxon_paired([f["pcc_m"] for f in a["folds"]], [f["pcc_m"] for f in b["folds"]])
    n = len(per_fold)
    level = alpha / max(n, 1)  # Bonferroni over the folds' gene-level tests
    better = sum(1 for f in per_fold if f["p"] < level and f["median_diff"] > 0)
    worse = sum(1 for f in per_fold if f["p"] < level and f["median_diff"] < 0)
    reachable = 2.0 / 2 ** n if n else 1.0
    if np.isfinite(folds["p"]) and folds["p"] < alpha:
        verdict = f"{name_a} {'better' if folds['median_diff'] > 0 else 'worse'} than {name_b} across folds (p = {folds['p']:.3g})"
    elif better and not worse:
        verdict = f"{name_a} better than {name_b} within {better}/{n} folds (gene-level, Bonferroni), not shown across folds"
    elif worse and not better:
        verdict = f"{name_a} worse than {name_b} within {worse}/{n} folds (gene-level, Bonferroni), not shown across folds"
    elif better and worse:
        verdict = f"mixed: {name_a} better in {better}/{n} folds, worse in {worse}/{n} (gene-level); no consistent difference"
    else:
        verdict = f"no difference shown between {name_a} and {name_b}"
    if reachable > alpha:
        verdict += f"; {n} folds cannot reach p < {alpha:g} across folds (smallest possible p = {reachable:.3g})"
    return {"a": name_a, "b": name_b, "per_fold": per_fold, "across_folds": folds, "better_folds": better,
            "worse_folds": worse, "alpha": alpha, "verdict": verdict,
            "significant_gain": bool(np.isfinite(folds["p"]) and folds["p"] < alpha and folds["median_diff"] > 0)
                                or (better > 0 and worse == 0)}
