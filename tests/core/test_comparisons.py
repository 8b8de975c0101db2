"""The paired tests behind every report's claims, and their one-line verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from eca_core.comparisons import compare_paired, wilcoxon_paired


def _units(scores: np.ndarray, shift: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Two methods on len(shift) units of 60 items: b = a - shift[u] + noise."""
    rng = np.random.default_rng(0)
    a, b = [], []
    for u, s in enumerate(shift):
        ia = scores + rng.normal(0, 0.01, scores.size)
        ib = ia - s + rng.normal(0, 0.01, scores.size)
        a.append({"unit": u, "items": ia, "score": float(ia.mean())})
        b.append({"unit": u, "items": ib, "score": float(ib.mean())})
    return a, b


def test_wilcoxon_paired_matches_scipy_and_its_effect_size():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(size=40)
    out = wilcoxon_paired(a, b)
    assert out["p"] == pytest.approx(wilcoxon(a - b).pvalue) and out["n"] == 40
    assert wilcoxon_paired(a + 5, a)["rank_biserial"] == 1.0 and wilcoxon_paired(a, a + 5)["rank_biserial"] == -1.0
    ties = wilcoxon_paired(a, a)
    assert np.isnan(ties["p"]) and ties["rank_biserial"] == 0.0


def test_verdicts_name_what_the_tests_show():
    scores = np.linspace(0.1, 0.9, 60)
    a, b = _units(scores, np.full(4, 0.05))  # better on every one of 4 folds
    better = compare_paired(a, b, "eca", "softmax")
    assert better["better_units"] == 4 and better["worse_units"] == 0 and better["significant_gain"]
    assert better["verdict"].startswith("eca better than softmax within 4/4 folds (gene-level, Bonferroni)")
    assert "4 folds cannot reach p < 0.05 across folds (smallest possible p = 0.125)" in better["verdict"]
    worse = compare_paired(b, a, "softmax", "eca")
    assert worse["verdict"].startswith("softmax worse than eca within 4/4") and not worse["significant_gain"]
    mixed = compare_paired(*_units(scores, np.array([0.05, -0.05, 0.05, -0.05])), "eca", "softmax")
    assert mixed["verdict"].startswith("mixed: eca better in 2/4 folds, worse in 2/4") and not mixed["significant_gain"]
    none = compare_paired(*_units(scores, np.zeros(4)), "eca", "softmax")
    assert none["verdict"].startswith("no difference shown") and not none["significant_gain"]
    many = compare_paired(*_units(scores, np.full(8, 0.05)), "eca", "softmax", unit="seed", item="row")
    assert many["verdict"].startswith("eca better than softmax across seeds (p = 0.0078") and "cannot reach" not in many["verdict"]
