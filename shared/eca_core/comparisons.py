"""Paired comparisons of two methods on the same units (folds, seeds): is a difference real?

Within each unit the two methods are scored on the same items (the genes of a fold's test spots, the
rows of a seed's test split), so the item scores pair up: a Wilcoxon signed-rank test over items
(scipy) with its effect size, the median difference and the matched-pairs rank-biserial correlation.
Across units the unit scores pair up: a second Wilcoxon test whose smallest attainable two-sided
p-value is 2 / 2^n for n units, which the verdict says when n units cannot reach the level. A
difference counts only when it is significant; the verdict is one line. Item and unit scores are
oriented so that higher is better.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ALPHA = 0.05


def wilcoxon_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, Any]:
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


def compare_paired(a: list[dict[str, Any]], b: list[dict[str, Any]], name_a: str, name_b: str, *,
                   unit: str = "fold", item: str = "gene", alpha: float = ALPHA) -> dict[str, Any]:
    """Paired tests of method ``a`` vs ``b`` and a one-line verdict.

    ``a`` and ``b`` list the same units in the same order, each ``{"unit": label, "items": scores per item
    (paired by position with the other method's), "score": the unit's summary}``; higher is better.
    """
    per_unit = []
    for ua, ub in zip(a, b):
        per_unit.append({"unit": ua["unit"], **wilcoxon_paired(ua["items"], ub["items"])})
    across = wilcoxon_paired([u["score"] for u in a], [u["score"] for u in b])
    n = len(per_unit)
    units = f"{unit}s"
    level = alpha / max(n, 1)  # Bonferroni over the units' item-level tests
    better = sum(1 for u in per_unit if u["p"] < level and u["median_diff"] > 0)
    worse = sum(1 for u in per_unit if u["p"] < level and u["median_diff"] < 0)
    reachable = 2.0 / 2 ** n if n else 1.0
    if np.isfinite(across["p"]) and across["p"] < alpha:
        verdict = f"{name_a} {'better' if across['median_diff'] > 0 else 'worse'} than {name_b} across {units} (p = {across['p']:.3g})"
    elif better and not worse:
        verdict = f"{name_a} better than {name_b} within {better}/{n} {units} ({item}-level, Bonferroni), not shown across {units}"
    elif worse and not better:
        verdict = f"{name_a} worse than {name_b} within {worse}/{n} {units} ({item}-level, Bonferroni), not shown across {units}"
    elif better and worse:
        verdict = f"mixed: {name_a} better in {better}/{n} {units}, worse in {worse}/{n} ({item}-level); no consistent difference"
    else:
        verdict = f"no difference shown between {name_a} and {name_b}"
    if reachable > alpha:
        verdict += f"; {n} {units} cannot reach p < {alpha:g} across {units} (smallest possible p = {reachable:.3g})"
    return {"a": name_a, "b": name_b, "per_unit": per_unit, "across_units": across, "better_units": better,
            "worse_units": worse, "alpha": alpha, "verdict": verdict,
            "significant_gain": bool(np.isfinite(across["p"]) and across["p"] < alpha and across["median_diff"] > 0)
                                or (better > 0 and worse == 0)}
