"""Metrics equal numpy/scipy; constant truth columns are counted, never scored."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from eca_core.metrics import pearson_per_column, regression_report


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 6))
    pred = truth * rng.uniform(0, 1, 6) + rng.normal(size=(40, 6))
    r = pearson_per_column(pred, truth)
    ref = [pearsonr(pred[:, k], truth[:, k])[0] for k in range(6)]
    np.testing.assert_allclose(r, ref, atol=1e-12)


def test_report_percentiles_and_errors():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(30, 10))
    pred = truth + rng.normal(scale=2.0, size=(30, 10))
    rep = regression_report(pred, truth)
    ref = np.array([pearsonr(pred[:, k], truth[:, k])[0] for k in range(10)])
    assert rep["pcc_f"] == pytest.approx(np.percentile(ref, 25))
    assert rep["pcc_s"] == pytest.approx(np.median(ref))
    assert rep["pcc_m"] == pytest.approx(ref.mean())
    assert rep["mse"] == pytest.approx(np.mean((pred - truth) ** 2))
    assert rep["mae"] == pytest.approx(np.mean(np.abs(pred - truth)))
    assert rep["n_constant"] == 0


def test_constant_truth_column_counted_not_scored():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(20, 4))
    truth[:, 2] = 0.0
    pred = rng.normal(size=(20, 4))
    rep = regression_report(pred, truth, names=["a", "b", "c", "d"])
    assert rep["n_constant"] == 1 and rep["constant_outputs"] == ["c"]
    assert rep["per_output"]["c"] is None
    ref = [pearsonr(pred[:, k], truth[:, k])[0] for k in (0, 1, 3)]
    assert rep["pcc_m"] == pytest.approx(np.mean(ref))


def test_all_constant_gives_nan_not_zero():
    rep = regression_report(np.random.rand(5, 2), np.ones((5, 2)))
    assert np.isnan(rep["pcc_m"]) and rep["n_constant"] == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        pearson_per_column(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pearson_per_column(np.array([[1.0], [np.nan]]), np.array([[1.0], [2.0]]))


def test_one_constant_column_rule_for_metrics_diagnostics_and_losses():
    import torch

    from eca_core.losses import _valid_columns
    from eca_core.metrics import CONSTANT_RTOL, constant_columns

    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(size=50),                        # varying
                  np.full(50, 3.0),                            # exactly constant
                  1e3 + 1e-6 * rng.normal(size=50),            # constant at its scale (std ~1e-9 of 1e3)
                  1e-3 * rng.normal(size=50)], axis=1)         # small but real spread
    want = np.array([False, True, True, False])
    np.testing.assert_array_equal(constant_columns(y), want)
    np.testing.assert_array_equal(~_valid_columns(torch.tensor(y, dtype=torch.float32)).numpy(), want)
    r = pearson_per_column(y + rng.normal(size=y.shape), y)
    np.testing.assert_array_equal(np.isnan(r), want)
    assert CONSTANT_RTOL == 1e-6


def test_a_missing_score_is_the_worst_finite_one():
    from eca_core.metrics import finite_score

    assert finite_score(float("nan")) == -1.0 and finite_score(float("nan"), higher_is_better=False) == 1e9
    assert finite_score(float("inf"), higher_is_better=False) == 1e9 and finite_score(0.25) == 0.25
